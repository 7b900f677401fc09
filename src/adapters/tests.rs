//! The example adapters against the built-in platforms' published vectors,
//! every scheme of the menu, template escaping and load errors.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{json, Value};

use super::*;
use crate::platform::adapter::{
    BearerVerifier, Inbound, PlatformAdapter, PlatformMessage, Principal, Rejection,
    WebhookRequest, WebhookResponse,
};
use crate::platform::{slack, telegram};

const API: &str = "http://127.0.0.1:9";

fn vectors() -> Value {
    let path = std::env::var("MOLTGATE_VECTORS").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/vectors/platforms.json"
        )
        .to_string()
    });
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("JSON")
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// An example file with its `${VAR}`s replaced (no process environment
/// in tests: they run in parallel) and `route.api_base` pointed at `API`.
fn example(file: &str, vars: &[(&str, &str)]) -> CompiledAdapter {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("adapters/examples")
        .join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    text = text.replace(
        "  mode: translate\n",
        &format!("  mode: translate\n  api_base: {API}\n"),
    );
    CompiledAdapter::from_yaml(&path, &text).unwrap_or_else(|e| panic!("{e}"))
}

fn compile(text: &str) -> Result<CompiledAdapter, FileError> {
    CompiledAdapter::from_yaml(Path::new("policies/adapters/acme.yaml"), text)
}

fn receive(
    a: &dyn PlatformAdapter,
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

fn message(r: Result<Inbound, Rejection>) -> PlatformMessage {
    match r.unwrap() {
        Inbound::Message(m) => *m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The fields both adapters must agree on.
fn same_fields(a: &PlatformMessage, b: &PlatformMessage) {
    assert_eq!(a.message_id, b.message_id);
    assert_eq!(a.tenant, b.tenant);
    assert_eq!(a.sender_id, b.sender_id);
    assert_eq!(a.sender_name, b.sender_name);
    assert_eq!(a.room_id, b.room_id);
    assert_eq!(a.thread_id, b.thread_id);
    assert_eq!(a.chat_type, b.chat_type);
    assert_eq!(a.text, b.text);
    assert_eq!(a.command, b.command);
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}

// ---------------------------------------------------------------- Slack

const SLACK_SECRET: &str = "s3cr3t";
const NOW: u64 = 1_700_000_000;

fn slack_pair() -> (CompiledAdapter, slack::SlackAdapter) {
    let decl = example(
        "slack.yaml",
        &[
            ("SLACK_SIGNING_SECRET", SLACK_SECRET),
            ("SLACK_BOT_TOKEN", "xoxb-1"),
        ],
    );
    let secrets = BTreeMap::from([
        ("signing_secret".to_string(), SLACK_SECRET.to_string()),
        ("bot_token".to_string(), "xoxb-1".to_string()),
    ]);
    (decl, slack::SlackAdapter::new(&secrets, Some(API)).unwrap())
}

fn slack_signed(body: &str, ts: u64) -> HeaderMap {
    let ts = ts.to_string();
    headers(&[
        (slack::TIMESTAMP_HEADER, &ts),
        (
            slack::SIGNATURE_HEADER,
            &slack::sign(SLACK_SECRET, &ts, body.as_bytes()),
        ),
    ])
}

#[test]
fn slack_example_maps_events_like_the_built_in_adapter() {
    let (decl, builtin) = slack_pair();
    let a = decl.adapter.as_ref();
    assert_eq!(a.platform(), "slack_events");
    for event in [
        json!({"type":"message","channel":"C1","user":"U1","ts":"1.2","text":"hello","channel_type":"channel"}),
        json!({"type":"message","channel":"C1","user":"U1","ts":"1.3","thread_ts":"1.0","text":"in thread","channel_type":"group"}),
        json!({"type":"app_mention","channel":"D1","user":"U2","ts":"1.4","text":"dm","channel_type":"im"}),
        json!({"type":"message","channel":"G1","user":"U2","ts":"1.5","text":"mp","channel_type":"mpim","team":"T9"}),
    ] {
        let body = json!({"token":"x","team_id":"T1","type":"event_callback","event_id":"Ev1","event":event}).to_string();
        let h = slack_signed(&body, NOW);
        let d = message(receive(a, &h, body.as_bytes(), NOW));
        let b = message(receive(&builtin, &h, body.as_bytes(), NOW));
        same_fields(&d, &b);
        assert_eq!(d.attributes, b.attributes);
        // Same reply: chat.postMessage in the thread, with the bot token.
        let (dc, bc) = (
            a.reply_calls(&d, "answer").unwrap(),
            builtin.reply_calls(&b, "answer").unwrap(),
        );
        assert_eq!((dc.len(), bc.len()), (1, 1));
        assert_eq!((&dc[0].method, &dc[0].url), (&bc[0].method, &bc[0].url));
        assert_eq!(json_of(&dc[0].body), json_of(&bc[0].body));
        assert_eq!(dc[0].success, bc[0].success);
        let auth = |c: &crate::platform::adapter::ApiCall| {
            c.headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(auth(&dc[0]), auth(&bc[0]));
        assert_eq!(a.inline_reply(&d, "x", at(NOW)), None);
        assert_eq!(a.ack(&d), WebhookResponse::empty());
    }
}

#[test]
fn slack_example_refuses_forgeries_and_replays() {
    let (decl, builtin) = slack_pair();
    let a = decl.adapter.as_ref();
    let body = json!({"team_id":"T1","type":"event_callback","event_id":"Ev1","event":{"type":"message","channel":"C1","user":"U1","ts":"1.2","text":"hi"}}).to_string();
    let h = slack_signed(&body, NOW);
    let mut tampered = body.clone().into_bytes();
    tampered[10] ^= 1;
    let ts = NOW.to_string();
    let cases: Vec<(HeaderMap, Vec<u8>, u64, &str)> = vec![
        (h.clone(), tampered, NOW, "bad_signature"),
        (
            headers(&[
                (slack::TIMESTAMP_HEADER, &ts),
                (slack::SIGNATURE_HEADER, "v0=00"),
            ]),
            body.clone().into(),
            NOW,
            "bad_signature",
        ),
        (
            headers(&[
                (slack::TIMESTAMP_HEADER, &ts),
                (slack::SIGNATURE_HEADER, "garbage"),
            ]),
            body.clone().into(),
            NOW,
            "bad_signature",
        ),
        (h.clone(), body.clone().into(), NOW + 301, "stale_timestamp"),
        (h.clone(), body.clone().into(), NOW - 301, "stale_timestamp"),
        (
            headers(&[(slack::TIMESTAMP_HEADER, &ts)]),
            body.clone().into(),
            NOW,
            "missing_field",
        ),
        (
            headers(&[
                (slack::TIMESTAMP_HEADER, "soon"),
                (slack::SIGNATURE_HEADER, "v0=00"),
            ]),
            body.clone().into(),
            NOW,
            "malformed",
        ),
    ];
    for (h, b, now, kind) in cases {
        let d = receive(a, &h, &b, now).unwrap_err();
        let s = receive(&builtin, &h, &b, now).unwrap_err();
        assert_eq!((d.kind(), d.status()), (kind, s.status()), "{d}");
        assert_eq!(d.kind(), s.kind());
        assert_eq!(d.public_kind(), "unauthenticated");
    }
    let get = a.receive(&WebhookRequest {
        method: &Method::GET,
        query: None,
        headers: &h,
        body: body.as_bytes(),
        now: at(NOW),
        bearer: None,
    });
    assert_eq!(get.unwrap_err(), Rejection::Method);
}

#[test]
fn slack_example_answers_and_skips_like_the_built_in_adapter() {
    let (decl, builtin) = slack_pair();
    let a = decl.adapter.as_ref();
    let challenge = r#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let h = slack_signed(challenge, NOW);
    match (
        receive(a, &h, challenge.as_bytes(), NOW).unwrap(),
        receive(&builtin, &h, challenge.as_bytes(), NOW).unwrap(),
    ) {
        (
            Inbound::Answer {
                response: d,
                event: de,
            },
            Inbound::Answer {
                response: b,
                event: be,
            },
        ) => {
            assert_eq!(
                (de, d.status, d.content_type),
                (be, b.status, b.content_type)
            );
            assert_eq!(json_of(&d.body), json_of(&b.body));
        }
        other => panic!("{other:?}"),
    }
    for (event, reason) in [
        (
            json!({"type":"message","bot_id":"B1","channel":"C1","ts":"1","text":"me"}),
            "bot_message",
        ),
        (
            json!({"type":"message","subtype":"bot_message","channel":"C1","ts":"1","text":"me"}),
            "bot_message",
        ),
        (
            json!({"type":"message","subtype":"message_changed","channel":"C1","ts":"1"}),
            "message_subtype",
        ),
        (
            json!({"type":"reaction_added","user":"U1"}),
            "unsupported_event",
        ),
    ] {
        let body = json!({"type":"event_callback","event_id":"Ev1","event":event}).to_string();
        let h = slack_signed(&body, NOW);
        for r in [
            receive(a, &h, body.as_bytes(), NOW),
            receive(&builtin, &h, body.as_bytes(), NOW),
        ] {
            match r.unwrap() {
                Inbound::Skip {
                    reason: got,
                    response,
                } => {
                    assert_eq!((got, response), (reason, WebhookResponse::empty()));
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let body = json!({"type":"app_rate_limited"}).to_string();
    assert!(matches!(
        receive(a, &slack_signed(&body, NOW), body.as_bytes(), NOW).unwrap(),
        Inbound::Skip {
            reason: "unsupported_event",
            ..
        }
    ));
}

/// The published Slack vector is a slash command (a form body): the same
/// verify block with `format: form` accepts it and maps what the built-in
/// adapter maps.
#[test]
fn slack_published_vector_through_a_form_adapter() {
    let v = &vectors()["slack"]["signature"];
    let (secret, ts, body, sig) = (
        v["signing_secret"].as_str().unwrap(),
        v["timestamp"].as_str().unwrap(),
        v["body"].as_str().unwrap(),
        v["signature"].as_str().unwrap(),
    );
    let text = format!(
        r#"name: slack_commands
format: form
verify:
  scheme: hmac
  secret: "{secret}"
  header: X-Slack-Signature
  prefix: "v0="
  message: "v0:{{timestamp}}:{{body}}"
  timestamp: {{ header: X-Slack-Request-Timestamp, window: 5m }}
fields:
  id: /trigger_id
  text: [/text, /command]
  command: /command
  sender: /user_id
  sender_name: /user_name
  tenant: /team_id
  room: /channel_id
"#
    );
    let decl = compile(&text).unwrap();
    let builtin = slack::SlackAdapter::new(
        &BTreeMap::from([("signing_secret".to_string(), secret.to_string())]),
        None,
    )
    .unwrap();
    let h = headers(&[
        (slack::TIMESTAMP_HEADER, ts),
        (slack::SIGNATURE_HEADER, sig),
    ]);
    let now: u64 = ts.parse().unwrap();
    let d = message(receive(decl.adapter.as_ref(), &h, body.as_bytes(), now));
    let b = message(receive(&builtin, &h, body.as_bytes(), now));
    assert_eq!(d.command.as_deref(), Some("webhook-collect"));
    assert_eq!(d.text, "/webhook-collect");
    let b = PlatformMessage {
        chat_type: d.chat_type,
        ..b
    };
    same_fields(&d, &b);
    let mut forged = body.as_bytes().to_vec();
    forged[0] ^= 1;
    let err = receive(decl.adapter.as_ref(), &h, &forged, now).unwrap_err();
    assert_eq!(err.kind(), "bad_signature");
    let err = receive(decl.adapter.as_ref(), &h, body.as_bytes(), now + 301).unwrap_err();
    assert_eq!(err.kind(), "stale_timestamp");
}

// ------------------------------------------------------------- Telegram

const TG_SECRET: &str = "s3cr3t_token-1";

fn telegram_pair() -> (CompiledAdapter, telegram::TelegramAdapter) {
    let decl = example(
        "telegram.yaml",
        &[
            ("TELEGRAM_SECRET_TOKEN", TG_SECRET),
            ("TELEGRAM_BOT_TOKEN", "123:ABC"),
        ],
    );
    let secrets = BTreeMap::from([
        ("secret_token".to_string(), TG_SECRET.to_string()),
        ("bot_token".to_string(), "123:ABC".to_string()),
    ]);
    (
        decl,
        telegram::TelegramAdapter::new(&secrets, Some(API)).unwrap(),
    )
}

#[test]
fn telegram_example_maps_the_published_update_like_the_built_in_adapter() {
    let (decl, builtin) = telegram_pair();
    let a = decl.adapter.as_ref();
    let sample = vectors()["telegram"]["sample_update"]["body"]
        .as_str()
        .unwrap()
        .to_string();
    let group = r#"{"update_id":5,"message":{"message_id":9,"message_thread_id":77,
        "from":{"id":2,"is_bot":false,"first_name":"Bo"},"chat":{"id":-1001,"type":"supergroup"},"text":"hi"}}"#;
    let h = headers(&[(telegram::SECRET_HEADER, TG_SECRET)]);
    for body in [sample.as_str(), group] {
        let d = message(receive(a, &h, body.as_bytes(), 0));
        let b = message(receive(&builtin, &h, body.as_bytes(), 0));
        same_fields(&d, &b);
        assert_eq!(
            d.attributes["telegram_message_id"],
            b.attributes["telegram_message_id"]
        );
        // The same inline sendMessage and API calls.
        let (di, bi) = (
            a.inline_reply(&d, "hello", at(0)).unwrap(),
            builtin.inline_reply(&b, "hello", at(0)).unwrap(),
        );
        assert_eq!((di.status, di.content_type), (bi.status, bi.content_type));
        assert_eq!(json_of(&di.body), json_of(&bi.body));
        assert!(a.inline_reply(&d, &"x".repeat(4097), at(0)).is_none());
        assert!(a.inline_reply(&d, "", at(0)).is_none());
        for text in ["hello", &"😀".repeat(3000)] {
            let (dc, bc) = (
                a.reply_calls(&d, text).unwrap(),
                builtin.reply_calls(&b, text).unwrap(),
            );
            assert_eq!(dc.len(), bc.len());
            for (x, y) in dc.iter().zip(&bc) {
                assert_eq!((&x.url, &x.success), (&y.url, &y.success));
                assert_eq!(json_of(&x.body), json_of(&y.body));
            }
        }
    }
    let d = message(receive(a, &h, sample.as_bytes(), 0));
    assert_eq!(
        (
            d.message_id.as_str(),
            d.sender_name.as_str(),
            d.text.as_str()
        ),
        ("10000", "Test Test Lastname", "/start")
    );
}

#[test]
fn telegram_example_checks_the_secret_token_and_skips_bots() {
    let (decl, builtin) = telegram_pair();
    let a = decl.adapter.as_ref();
    let sample = vectors()["telegram"]["sample_update"]["body"]
        .as_str()
        .unwrap()
        .to_string();
    for h in [
        headers(&[(telegram::SECRET_HEADER, "s3cr3t_token-2")]),
        headers(&[(telegram::SECRET_HEADER, "s3cr3t_token-1x")]),
        headers(&[(telegram::SECRET_HEADER, "")]),
        HeaderMap::new(),
    ] {
        let d = receive(a, &h, sample.as_bytes(), 0).unwrap_err();
        let b = receive(&builtin, &h, sample.as_bytes(), 0).unwrap_err();
        assert_eq!((d.kind(), d.status()), (b.kind(), b.status()));
        assert!(!d.to_string().contains(TG_SECRET));
    }
    let bot =
        r#"{"update_id":1,"message":{"from":{"id":1,"is_bot":true},"chat":{"id":1},"text":"me"}}"#;
    let h = headers(&[(telegram::SECRET_HEADER, TG_SECRET)]);
    assert!(matches!(
        receive(a, &h, bot.as_bytes(), 0).unwrap(),
        Inbound::Skip {
            reason: "bot_message",
            ..
        }
    ));
    let sticker = r#"{"update_id":1,"message":{"from":{"id":1},"chat":{"id":1},"sticker":{}}}"#;
    assert!(matches!(
        receive(a, &h, sticker.as_bytes(), 0).unwrap(),
        Inbound::Skip {
            reason: "no_text",
            ..
        }
    ));
    for junk in ["", "{", "[]", "{}", "null", "\u{0}\u{ff}"] {
        let err = receive(a, &h, junk.as_bytes(), 0).unwrap_err();
        assert!(
            matches!(err, Rejection::Malformed(_) | Rejection::Missing(_)),
            "{junk}: {err:?}"
        );
    }
}

mod schemes;
