use super::*;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::{SystemTime, UNIX_EPOCH};

/// The published vectors (shared by the Slack, Discord and Telegram tests).
pub(crate) fn vectors() -> Value {
    let path = std::env::var("MOLTGATE_VECTORS").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/vectors/platforms.json"
        )
        .to_string()
    });
    let text = std::fs::read_to_string(&path).expect("vectors file");
    serde_json::from_str(&text).expect("vectors JSON")
}

/// A header map from name/value pairs.
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// A clock reading `secs` after the epoch.
pub(crate) fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const SECRET: &str = "s3cr3t";
const NOW: u64 = 1_700_000_000;

fn adapter() -> SlackAdapter {
    let secrets = BTreeMap::from([
        ("signing_secret".to_string(), SECRET.to_string()),
        ("bot_token".to_string(), "xoxb-1".to_string()),
    ]);
    SlackAdapter::new(&secrets, Some("http://127.0.0.1:9/")).unwrap()
}

fn signed(body: &str, ts: u64) -> HeaderMap {
    let ts = ts.to_string();
    headers(&[
        (TIMESTAMP_HEADER, &ts),
        (SIGNATURE_HEADER, &sign(SECRET, &ts, body.as_bytes())),
    ])
}

fn receive_with(
    a: &SlackAdapter,
    h: &HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<Inbound, Rejection> {
    a.receive(&WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: h,
        body,
        now: at(now),
        bearer: None,
    })
}

fn receive(body: &str) -> Result<Inbound, Rejection> {
    receive_with(&adapter(), &signed(body, NOW), body.as_bytes(), NOW)
}

fn message(body: &str) -> PlatformMessage {
    match receive(body).unwrap() {
        Inbound::Message(m) => *m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn skip_reason(body: &str) -> &'static str {
    match receive(body).unwrap() {
        Inbound::Skip { reason, response } => {
            assert_eq!(response, WebhookResponse::empty());
            reason
        }
        other => panic!("expected a skip, got {other:?}"),
    }
}

fn event_body(event: Value) -> String {
    json!({"token":"x","team_id":"T1","type":"event_callback","event_id":"Ev1","event_time":1,"event":event}).to_string()
}

#[test]
fn published_vector_signs_and_verifies() {
    let v = &vectors()["slack"]["signature"];
    let (secret, ts, body, sig) = (
        v["signing_secret"].as_str().unwrap(),
        v["timestamp"].as_str().unwrap(),
        v["body"].as_str().unwrap(),
        v["signature"].as_str().unwrap(),
    );
    assert_eq!(sign(secret, ts, body.as_bytes()), sig);
    verify(secret, ts, body.as_bytes(), sig).unwrap();
    // Through the adapter, at the vector's own time: verified, and the
    // slash-command form body is a message whose command is its own field.
    let secrets = BTreeMap::from([("signing_secret".to_string(), secret.to_string())]);
    let a = SlackAdapter::new(&secrets, None).unwrap();
    let h = headers(&[(TIMESTAMP_HEADER, ts), (SIGNATURE_HEADER, sig)]);
    let now: u64 = ts.parse().unwrap();
    let Inbound::Message(m) = receive_with(&a, &h, body.as_bytes(), now).unwrap() else {
        panic!("a slash command is a message")
    };
    assert_eq!(m.command.as_deref(), Some("webhook-collect"));
    assert_eq!(
        m.text, "/webhook-collect",
        "no arguments: the command stands in"
    );
    assert_eq!(
        (m.sender_id.as_str(), m.room_id.as_str(), m.tenant.as_str()),
        ("U2CERLKJA", "G8PSS9T3V", "T1DC2JH3J")
    );
    assert_eq!(m.sender_name, "roadrunner");
    assert_eq!(m.chat_type, ChatType::Group);
    assert_eq!(
        m.message_id,
        "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    );
    assert_eq!(
        m.reply_to["response_url"],
        "https://hooks.slack.com/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN"
    );
    // One flipped byte of body breaks it.
    let mut forged = body.as_bytes().to_vec();
    forged[0] ^= 1;
    assert_eq!(
        receive_with(&a, &h, &forged, now).unwrap_err().kind(),
        "bad_signature"
    );
    // The same request 301 s later is stale.
    let err = receive_with(&a, &h, body.as_bytes(), now + 301).unwrap_err();
    assert_eq!(err.kind(), "stale_timestamp");
    // A wider window (for tests) accepts it.
    let wide = SlackAdapter::new(&secrets, None)
        .unwrap()
        .with_replay_window(Duration::from_secs(3600));
    assert!(receive_with(&wide, &h, body.as_bytes(), now + 301).is_ok());
}

#[test]
fn forged_missing_and_malformed_headers_are_rejected() {
    let a = adapter();
    let body =
        event_body(json!({"type":"message","channel":"C1","user":"U1","ts":"1.2","text":"hi"}));
    let ts = NOW.to_string();
    let wrong = sign("other-secret", &ts, body.as_bytes());
    let cases: Vec<(HeaderMap, &str)> = vec![
        (
            headers(&[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, &wrong)]),
            "bad_signature",
        ),
        (
            headers(&[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, "v0=")]),
            "bad_signature",
        ),
        (
            headers(&[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, "garbage")]),
            "bad_signature",
        ),
        (headers(&[(TIMESTAMP_HEADER, &ts)]), "missing_field"),
        (headers(&[(SIGNATURE_HEADER, &wrong)]), "missing_field"),
        (
            headers(&[(TIMESTAMP_HEADER, "soon"), (SIGNATURE_HEADER, &wrong)]),
            "malformed",
        ),
    ];
    for (h, kind) in cases {
        let err = receive_with(&a, &h, body.as_bytes(), NOW).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        // Never echo the expected signature.
        assert!(!err
            .to_string()
            .contains(&sign(SECRET, &ts, body.as_bytes())));
    }
    // Stale in both directions.
    for now in [NOW + 301, NOW - 301] {
        let err = receive_with(&a, &signed(&body, NOW), body.as_bytes(), now).unwrap_err();
        assert_eq!(err.kind(), "stale_timestamp");
    }
    // Other methods.
    let err = a
        .receive(&WebhookRequest {
            method: &Method::GET,
            query: None,
            headers: &signed(&body, NOW),
            body: body.as_bytes(),
            now: at(NOW),
            bearer: None,
        })
        .unwrap_err();
    assert_eq!(err, Rejection::Method);
}

#[test]
fn malformed_bodies_are_rejected_without_panicking() {
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff, 0xfe, 0x00],
        b"{".to_vec(),
        b"[1,2]".to_vec(),
        b"null".to_vec(),
        br#"{"type":"event_callback"}"#.to_vec(),
        br#"{"type":"event_callback","event":"x"}"#.to_vec(),
        br#"{"type":"event_callback","event":{"type":"message","text":"x"}}"#.to_vec(),
        br#"{"type":"url_verification"}"#.to_vec(),
        br#"{"type":7}"#.to_vec(),
    ];
    for body in junk {
        let ts = NOW.to_string();
        let h = headers(&[
            (TIMESTAMP_HEADER, &ts),
            (SIGNATURE_HEADER, &sign(SECRET, &ts, &body)),
        ]);
        let err = receive_with(&adapter(), &h, &body, NOW).unwrap_err();
        assert!(
            matches!(err, Rejection::Malformed(_) | Rejection::Missing(_)),
            "{err:?}"
        );
    }
    // Pseudo-random bytes never panic.
    let mut x: u32 = 7;
    for len in 0..200 {
        let body: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        let _ = parse_payload(&body);
    }
}

#[test]
fn url_verification_is_answered() {
    let got = receive(r#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#).unwrap();
    match got {
        Inbound::Answer { response, event } => {
            assert_eq!(event, "url_verification");
            let v: Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(
                v["challenge"],
                "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn channel_message_in_thread() {
    let m = message(&event_body(json!({
        "type":"message","channel":"C1","user":"U1","ts":"1700000000.000200",
        "thread_ts":"1700000000.000100","channel_type":"channel",
        "text":"<@UBOT> what is 1 &lt; 2 &amp;&amp; <@U2|bob> ?"
    })));
    assert_eq!(m.message_id, "Ev1");
    assert_eq!(m.tenant, "T1");
    assert_eq!(m.sender_id, "U1");
    assert_eq!(m.room_id, "C1");
    assert_eq!(m.thread_id, "1700000000.000100");
    assert_eq!(m.chat_type, "channel");
    assert_eq!(m.text, "what is 1 < 2 &&  ?");
    assert_eq!(m.mentions, vec!["UBOT", "U2"]);
    assert_eq!(m.attributes["event_type"], "message");
    assert_eq!(
        m.reply_to,
        json!({"channel":"C1","thread_ts":"1700000000.000100"})
    );
}

#[test]
fn direct_message_and_app_mention() {
    let m = message(&event_body(json!({
        "type":"message","channel":"D1","user":"U1","ts":"5.1","channel_type":"im","text":"hello"
    })));
    assert_eq!(m.chat_type, "private");
    assert_eq!(m.thread_id, "");
    // Not in a thread: the reply starts one under the message.
    assert_eq!(m.reply_to["thread_ts"], "5.1");

    let m = message(&event_body(json!({
        "type":"app_mention","channel":"C9","user":"U1","ts":"6.1","text":"<@UBOT> hi"
    })));
    assert_eq!(m.attributes["event_type"], "app_mention");
    assert_eq!(m.text, "hi");
    assert_eq!(m.chat_type, "channel");

    let m = message(&event_body(json!({
        "type":"message","channel":"G1","user":"U1","ts":"6.1","channel_type":"mpim","text":"yo"
    })));
    assert_eq!(m.chat_type, "group");
}

#[test]
fn bots_subtypes_and_unknown_events_are_skipped() {
    let bot =
        event_body(json!({"type":"message","channel":"C1","bot_id":"B1","ts":"1","text":"me"}));
    assert_eq!(skip_reason(&bot), "bot_message");
    let bot = event_body(
        json!({"type":"message","subtype":"bot_message","channel":"C1","ts":"1","text":"me"}),
    );
    assert_eq!(skip_reason(&bot), "bot_message");
    let edit =
        event_body(json!({"type":"message","subtype":"message_changed","channel":"C1","ts":"1"}));
    assert_eq!(skip_reason(&edit), "message_subtype");
    let react = event_body(json!({"type":"reaction_added","user":"U1"}));
    assert_eq!(skip_reason(&react), "unsupported_event");
    let only_mention = event_body(
        json!({"type":"app_mention","channel":"C1","user":"U1","ts":"1","text":"<@UBOT>"}),
    );
    assert_eq!(skip_reason(&only_mention), "empty_text");
    assert_eq!(
        skip_reason(r#"{"type":"app_rate_limited","minute_rate_limited":1}"#),
        "unsupported_event"
    );
    assert_eq!(skip_reason("payload=%7B%7D"), "interactive");
}

#[test]
fn reply_goes_to_chat_post_message_in_thread() {
    let a = adapter();
    let m = message(&event_body(
        json!({"type":"message","channel":"C1","user":"U1","ts":"5.1","text":"q"}),
    ));
    assert_eq!(a.inline_reply(&m, "x", at(NOW)), None);
    assert_eq!(a.ack(&m), WebhookResponse::empty());
    let calls = a.reply_calls(&m, "answer").unwrap();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.method, Method::POST);
    assert_eq!(c.url, "http://127.0.0.1:9/api/chat.postMessage");
    assert!(c
        .headers
        .contains(&("authorization".into(), "Bearer xoxb-1".into())));
    assert!(c
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
    let body: Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(
        body,
        json!({"channel":"C1","text":"answer","thread_ts":"5.1"})
    );
    assert_eq!(c.success, Some(("/ok", Value::Bool(true))));
    assert!(c.auth.is_none());

    // Default base, and no bot token configured.
    let secrets = BTreeMap::from([("signing_secret".to_string(), "s".to_string())]);
    let bare = SlackAdapter::new(&secrets, None).unwrap();
    assert_eq!(
        bare.reply_calls(&m, "a").unwrap_err(),
        Rejection::Missing("bot_token")
    );
    assert!(SlackAdapter::new(&BTreeMap::new(), None)
        .err()
        .unwrap()
        .to_string()
        .contains("signing_secret"));
}

/// Resealed later than it was signed: signed with the later time, at
/// which it verifies, the mention and the message id kept.
#[test]
fn reseal_of_a_later_request_is_signed_fresh() {
    let a = adapter();
    let body = event_body(json!({
        "type":"message","channel":"C1","user":"U1","ts":"5.1",
        "text":"<@UBOT> card 4111 1111 1111 1111","blocks":[{"type":"rich_text"}]
    }));
    let m = message(&body);
    let later = NOW + 60;
    let h = signed(&body, NOW);
    let req = WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: &h,
        body: body.as_bytes(),
        now: at(later),
        bearer: None,
    };
    let mut p = a.payload(&req).unwrap();
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        *s = s.replace("4111 1111 1111 1111", "****");
    })
    .unwrap();
    let sealed = a.reseal_payload(&req, &p).unwrap();
    assert!(!String::from_utf8_lossy(&sealed.body).contains("4111"));
    let h2 = sealed_headers(&sealed);
    assert_eq!(h2[TIMESTAMP_HEADER], later.to_string().as_str());
    let got = match receive_with(&a, &h2, &sealed.body, later).unwrap() {
        Inbound::Message(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.text, "card ****");
    assert_eq!(got.mentions, vec!["UBOT"]);
    assert_eq!(got.message_id, m.message_id);
}

fn slash_body(text: &str, response_url: &str) -> String {
    Payload::Form(vec![
        ("token".into(), "vtok".into()),
        ("team_id".into(), "T1".into()),
        ("channel_id".into(), "C9".into()),
        ("channel_name".into(), "general".into()),
        ("user_id".into(), "U1".into()),
        ("user_name".into(), "ann".into()),
        ("command".into(), "/Deploy".into()),
        ("text".into(), text.into()),
        ("response_url".into(), response_url.into()),
        (
            "trigger_id".into(),
            "13345224609.738474920.8088930838d88f008e0".into(),
        ),
    ])
    .to_bytes()
    .map(|b| String::from_utf8(b.to_vec()).unwrap())
    .unwrap()
}

#[test]
fn slash_commands_are_messages_with_their_command() {
    let a = adapter();
    let hook = "https://hooks.slack.com/commands/T1/1/abc";
    let m = message(&slash_body("prod <@U2|bob> now", hook));
    assert_eq!(m.command.as_deref(), Some("deploy"));
    assert_eq!(m.text, "prod  now");
    assert_eq!(m.mentions, vec!["U2"]);
    assert_eq!(
        (m.sender_id.as_str(), m.room_id.as_str(), m.tenant.as_str()),
        ("U1", "C9", "T1")
    );
    assert_eq!(m.chat_type, ChatType::Channel);
    assert_eq!(m.attributes["event_type"], "slash_command");
    // The inline answer is the command's own JSON answer.
    let inline = a.inline_reply(&m, "done", at(NOW)).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&inline.body).unwrap(),
        json!({"response_type":"ephemeral","text":"done"})
    );
    assert!(a.inline_reply(&m, "", at(NOW)).is_none());
    assert_eq!(a.ack(&m), WebhookResponse::empty());
    // Deferred: the response_url, only on Slack's hooks host.
    let calls = a.reply_calls(&m, "later").unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].url, hook);
    assert!(calls[0].auth.is_none());
    assert!(!calls[0].headers.iter().any(|(k, _)| k == "authorization"));
    assert_eq!(
        serde_json::from_slice::<Value>(&calls[0].body).unwrap(),
        json!({"response_type":"ephemeral","text":"later"})
    );
    for evil in [
        "https://evil.example/commands/x",
        "https://hooks.slack.com@evil.example/x",
        "http://hooks.slack.com/commands/x",
        "",
    ] {
        let m = message(&slash_body("x", evil));
        let calls = a.reply_calls(&m, "later").unwrap();
        assert_eq!(
            calls[0].url, "http://127.0.0.1:9/api/chat.postMessage",
            "{evil}"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&calls[0].body).unwrap(),
            json!({"channel":"C9","text":"later"})
        );
    }
    // Direct messages and missing fields.
    let dm = slash_body("x", hook).replace("channel_id=C9", "channel_id=D9");
    assert_eq!(message(&dm).chat_type, ChatType::Private);
    for (from, to) in [
        ("command=%2FDeploy", "command=%2F"),
        ("user_id=U1", "user_id="),
    ] {
        let body = slash_body("x", hook).replace(from, to);
        assert_eq!(receive(&body).unwrap_err().kind(), "missing_field", "{to}");
    }
    assert_eq!(receive("a=1&b=2").unwrap_err().kind(), "malformed");
}

fn sealed_headers(sealed: &Resealed) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in &sealed.headers {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn mask(p: &mut Payload, opaque: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    p.texts_mut(opaque, &mut |s: &mut String| {
        seen.push(s.clone());
        *s = s.replace("4111", "****");
    })
    .unwrap();
    seen
}

#[test]
fn payload_reseal_round_trips_json_events() {
    let a = adapter();
    let body = event_body(json!({
        "type":"message","channel":"C1","user":"U1","ts":"5.1","client_msg_id":"4111-x",
        "text":"<@UBOT> card 4111",
        "blocks":[{"type":"rich_text","block_id":"b4111","elements":[{"type":"rich_text_section",
            "elements":[{"type":"text","text":"card 4111"},{"type":"link","url":"https://x/4111"}]}]}],
        "attachments":[{"fallback":"fb 4111","title":"t 4111","pretext":"p 4111","id":1}]
    }));
    let h = signed(&body, NOW);
    let req = WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: &h,
        body: body.as_bytes(),
        now: at(NOW + 30),
        bearer: None,
    };
    let mut p = a.payload(&req).unwrap();
    let mut seen = mask(&mut p, a.opaque_keys());
    seen.sort();
    assert_eq!(
        seen,
        [
            "<@UBOT> card 4111",
            "card 4111",
            "fb 4111",
            "https://x/4111",
            "p 4111",
            "t 4111"
        ]
    );
    let sealed = a.reseal_payload(&req, &p).unwrap();
    let text = String::from_utf8(sealed.body.to_vec()).unwrap();
    assert_eq!(text.matches("4111").count(), 2, "only ids keep it: {text}");
    let h2 = sealed_headers(&sealed);
    let Inbound::Message(m) = receive_with(&a, &h2, &sealed.body, NOW + 30).unwrap() else {
        panic!()
    };
    assert_eq!(m.text, "card ****");
    assert_eq!(m.mentions, vec!["UBOT"]);
    // A forged original is never signed.
    let forged = headers(&[
        (TIMESTAMP_HEADER, &NOW.to_string()),
        (SIGNATURE_HEADER, "v0=00"),
    ]);
    assert!(a
        .reseal_payload(
            &WebhookRequest {
                headers: &forged,
                ..req
            },
            &p
        )
        .is_none());
    assert!(a.reseal_payload(&req, &Payload::Text("x".into())).is_none());
}

#[test]
fn payload_reseal_round_trips_slash_command_forms() {
    let a = adapter();
    let body = slash_body("pay 4111", "https://hooks.slack.com/commands/T1/1/abc");
    let h = signed(&body, NOW);
    let req = WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: &h,
        body: body.as_bytes(),
        now: at(NOW + 1),
        bearer: None,
    };
    let mut p = a.payload(&req).unwrap();
    assert!(matches!(p, Payload::Form(_)));
    let mut seen = mask(&mut p, a.opaque_keys());
    seen.sort();
    assert_eq!(seen, ["/Deploy", "ann", "general", "pay 4111"]);
    let sealed = a.reseal_payload(&req, &p).unwrap();
    let h2 = sealed_headers(&sealed);
    let Inbound::Message(m) = receive_with(&a, &h2, &sealed.body, NOW + 1).unwrap() else {
        panic!()
    };
    assert_eq!(m.text, "pay ****");
    assert_eq!(m.command.as_deref(), Some("deploy"));
    assert_eq!(
        m.reply_to["response_url"],
        "https://hooks.slack.com/commands/T1/1/abc"
    );
    // Interactivity payloads are forms too, scanned whole.
    let body = "payload=%7B%22type%22%3A%22block_actions%22%7D";
    let h = signed(body, NOW);
    let req = WebhookRequest {
        body: body.as_bytes(),
        headers: &h,
        ..req
    };
    assert_eq!(
        a.payload(&req).unwrap(),
        Payload::Form(vec![(
            "payload".into(),
            "{\"type\":\"block_actions\"}".into()
        )])
    );
}
