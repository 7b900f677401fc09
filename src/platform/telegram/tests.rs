use super::super::slack::tests::{at, headers, vectors};
use super::*;
use http::HeaderMap;

const SECRET: &str = "s3cr3t_token-1";

fn adapter() -> TelegramAdapter {
    let secrets = BTreeMap::from([
        ("secret_token".to_string(), SECRET.to_string()),
        ("bot_token".to_string(), "123:ABC".to_string()),
    ]);
    TelegramAdapter::new(&secrets, Some("http://127.0.0.1:9/")).unwrap()
}

fn receive_with(h: &HeaderMap, body: &[u8]) -> Result<Inbound, Rejection> {
    adapter().receive(&WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: h,
        body,
        now: at(0),
        bearer: None,
    })
}

fn receive(body: &str) -> Result<Inbound, Rejection> {
    receive_with(&headers(&[(SECRET_HEADER, SECRET)]), body.as_bytes())
}

fn message(body: &str) -> PlatformMessage {
    match receive(body).unwrap() {
        Inbound::Message(m) => *m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn skip_reason(body: &str) -> &'static str {
    match receive(body).unwrap() {
        Inbound::Skip { reason, .. } => reason,
        other => panic!("expected a skip, got {other:?}"),
    }
}

fn sample() -> String {
    vectors()["telegram"]["sample_update"]["body"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn published_sample_update_parses() {
    let m = message(&sample());
    assert_eq!(m.message_id, "10000");
    assert_eq!(m.sender_id, "1111111");
    assert_eq!(m.sender_name, "Test Test Lastname");
    assert_eq!(m.room_id, "1111111");
    assert_eq!(m.chat_type, "private");
    assert_eq!(m.thread_id, "");
    assert_eq!(m.text, "/start");
    // No bot_command entity in the sample: the message path reads the text.
    assert_eq!(m.command, None);
    assert_eq!(m.attributes["update_type"], "message");
    assert_eq!(m.attributes["telegram_message_id"], "1365");
    assert_eq!(m.reply_to, json!({"chat_id":1111111}));
}

#[test]
fn secret_token_is_checked() {
    let body = sample();
    for h in [
        headers(&[(SECRET_HEADER, "s3cr3t_token-2")]),
        headers(&[(SECRET_HEADER, "s3cr3t_token-1x")]),
        headers(&[(SECRET_HEADER, "")]),
    ] {
        let err = receive_with(&h, body.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), "bad_signature");
        assert!(!err.to_string().contains(SECRET));
    }
    let err = receive_with(&HeaderMap::new(), body.as_bytes()).unwrap_err();
    assert_eq!(err.kind(), "missing_field");
    let err = adapter()
        .receive(&WebhookRequest {
            method: &Method::GET,
            query: None,
            headers: &headers(&[(SECRET_HEADER, SECRET)]),
            body: body.as_bytes(),
            now: at(0),
            bearer: None,
        })
        .unwrap_err();
    assert_eq!(err, Rejection::Method);
    verify_secret_token(SECRET, SECRET).unwrap();
    assert!(verify_secret_token("", "").is_err());
}

#[test]
fn config_is_validated() {
    let bad = BTreeMap::from([("secret_token".to_string(), "has space".to_string())]);
    assert!(TelegramAdapter::new(&bad, None).is_err());
    let err = TelegramAdapter::new(&BTreeMap::new(), None).err().unwrap();
    assert!(err.to_string().contains("secret_token"));
}

#[test]
fn malformed_updates_are_rejected() {
    for body in [
        "",
        "{",
        "[]",
        "{}",
        r#"{"update_id":1,"message":"x"}"#,
        r#"{"update_id":1,"message":{"text":"x","chat":{"id":1}}}"#,
        r#"{"update_id":1,"message":{"text":"x","from":{"id":1}}}"#,
        r#"{"update_id":1,"message":{"text":"x","from":{"id":1},"chat":{"id":[]}}}"#,
        r#"{"update_id":{},"message":{}}"#,
    ] {
        let err = receive(body).unwrap_err();
        assert!(
            matches!(err, Rejection::Malformed(_) | Rejection::Missing(_)),
            "{body}: {err:?}"
        );
    }
    let _ = parse_update(&[0xff, 0x00, 0x7b]).unwrap_err();
}

#[test]
fn groups_threads_edits_callbacks_and_mentions() {
    let m = message(
        r#"{"update_id":5,"message":{"message_id":9,"message_thread_id":77,
            "from":{"id":2,"is_bot":false,"first_name":"Bo"},
            "chat":{"id":-1001,"type":"supergroup"},
            "text":"@mybot héllo","entities":[{"type":"mention","offset":0,"length":6},
            {"type":"text_mention","offset":7,"length":5,"user":{"id":31}},
            {"type":"mention","offset":999,"length":5}]}}"#,
    );
    assert_eq!(m.chat_type, "group");
    assert_eq!(m.thread_id, "77");
    assert_eq!(m.room_id, "-1001");
    assert_eq!(m.text, "@mybot héllo");
    assert_eq!(m.mentions, vec!["@mybot", "31"]);
    assert_eq!(m.reply_to, json!({"chat_id":-1001,"message_thread_id":77}));

    let m = message(
        r#"{"update_id":6,"edited_message":{"message_id":9,"from":{"id":2},
            "chat":{"id":3,"type":"private"},"text":"fixed"}}"#,
    );
    assert_eq!(m.attributes["update_type"], "edited_message");
    assert_eq!(m.text, "fixed");

    let m = message(
        r#"{"update_id":7,"message":{"message_id":9,"from":{"id":2},
            "chat":{"id":3,"type":"channel"},"photo":[],"caption":"a cat"}}"#,
    );
    assert_eq!(m.text, "a cat");
    assert_eq!(m.chat_type, "channel");

    let m = message(
        r#"{"update_id":8,"callback_query":{"id":"cb1","from":{"id":4,"username":"zed"},
            "message":{"message_id":9,"message_thread_id":5,"chat":{"id":3,"type":"group"},"text":"pick"},
            "data":"choice_a"}}"#,
    );
    assert_eq!(m.text, "choice_a");
    assert_eq!(m.sender_id, "4");
    assert_eq!(m.sender_name, "zed");
    assert_eq!(m.thread_id, "5");
    assert_eq!(m.reply_to["callback_query_id"], "cb1");
}

#[test]
fn unsupported_and_bot_updates_are_skipped() {
    assert_eq!(
        skip_reason(r#"{"update_id":1,"poll":{}}"#),
        "unsupported_update"
    );
    assert_eq!(
        skip_reason(
            r#"{"update_id":1,"callback_query":{"id":"x","from":{"id":1},"inline_message_id":"i"}}"#
        ),
        "inline_callback"
    );
    assert_eq!(
        skip_reason(
            r#"{"update_id":1,"message":{"from":{"id":1,"is_bot":true},"chat":{"id":1},"text":"me"}}"#
        ),
        "bot_message"
    );
    assert_eq!(
        skip_reason(r#"{"update_id":1,"message":{"from":{"id":1},"chat":{"id":1},"sticker":{}}}"#),
        "no_text"
    );
}

#[test]
fn inline_reply_and_send_message() {
    let a = adapter();
    let m = message(
        r#"{"update_id":5,"message":{"message_id":9,"message_thread_id":77,
            "from":{"id":2},"chat":{"id":-1001,"type":"supergroup"},"text":"hi"}}"#,
    );
    let inline = a.inline_reply(&m, "hello", at(0)).unwrap();
    assert_eq!(inline.content_type, "application/json");
    let v: Value = serde_json::from_slice(&inline.body).unwrap();
    assert_eq!(
        v,
        json!({"method":"sendMessage","chat_id":-1001,"text":"hello","message_thread_id":77})
    );
    assert!(a
        .inline_reply(&m, &"x".repeat(MAX_TEXT + 1), at(0))
        .is_none());
    assert_eq!(a.ack(&m), WebhookResponse::empty());

    let calls = a.reply_calls(&m, "hello").unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, Method::POST);
    assert_eq!(calls[0].url, "http://127.0.0.1:9/bot123:ABC/sendMessage");
    let v: Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(
        v,
        json!({"chat_id":-1001,"text":"hello","message_thread_id":77})
    );
    assert_eq!(calls[0].success, Some(("/ok", Value::Bool(true))));
    // Long replies are split on character boundaries.
    let calls = a.reply_calls(&m, &"😀".repeat(3000)).unwrap();
    assert_eq!(calls.len(), 2);

    let secrets = BTreeMap::from([("secret_token".to_string(), "x".to_string())]);
    let bare = TelegramAdapter::new(&secrets, None).unwrap();
    assert_eq!(
        bare.reply_calls(&m, "x").unwrap_err(),
        Rejection::Missing("bot_token")
    );
}

#[test]
fn split_utf16_respects_limits() {
    assert!(split_utf16("", 10).is_empty());
    assert_eq!(split_utf16("abcde", 2), vec!["ab", "cd", "e"]);
    assert_eq!(split_utf16("😀😀", 3), vec!["😀", "😀"]);
    // A character wider than the limit still makes progress.
    assert_eq!(split_utf16("😀a", 1), vec!["😀", "a"]);
}

/// A message's `text` and its `entities`, callback data and an edited
/// message's caption: masked in the payload, resealed, and read again.
#[test]
fn reseal_payload_of_texts_captions_and_callback_data() {
    let a = adapter();
    let body = r#"{"update_id":5,"message":{"message_id":9,"from":{"id":2},"chat":{"id":3},
            "text":"/pay 4111111111111111","entities":[{"type":"bot_command","offset":0,"length":4},
            {"type":"code","offset":5,"length":16}]}}"#;
    let h = headers(&[(SECRET_HEADER, SECRET)]);
    let req = WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: &h,
        body: body.as_bytes(),
        now: at(0),
        bearer: None,
    };
    let reseal = |req: &WebhookRequest<'_>, from: &str, to: &str| {
        let mut p = a.payload(req).unwrap();
        let mut seen = Vec::new();
        p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
            seen.push(s.clone());
            *s = s.replace(from, to);
        })
        .unwrap();
        (seen, a.reseal_payload(req, &p).unwrap())
    };
    let (seen, sealed) = reseal(&req, "4111111111111111", "****");
    assert_eq!(seen, ["/pay 4111111111111111"]);
    assert_eq!(
        sealed.headers,
        vec![(SECRET_HEADER.to_string(), SECRET.to_string())]
    );
    assert!(!String::from_utf8_lossy(&sealed.body).contains("4111"));
    let got = match receive_with(&h, &sealed.body).unwrap() {
        Inbound::Message(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.text, "/pay ****");
    assert_eq!(got.command.as_deref(), Some("pay"));
    let v: Value = serde_json::from_slice(&sealed.body).unwrap();
    assert_eq!(
        v["message"]["entities"],
        json!([{"type":"bot_command","offset":0,"length":4}])
    );

    // Callback data and an edited message's caption are resealed too.
    for body in [
        r#"{"update_id":8,"callback_query":{"id":"c","from":{"id":4},"message":{"chat":{"id":3}},"data":"secret"}}"#,
        r#"{"update_id":9,"edited_message":{"from":{"id":4},"chat":{"id":3},"caption":"secret"}}"#,
    ] {
        let req = WebhookRequest {
            body: body.as_bytes(),
            ..req
        };
        let (seen, sealed) = reseal(&req, "secret", "masked");
        assert_eq!(seen, ["secret"], "{body}");
        match receive_with(&h, &sealed.body).unwrap() {
            Inbound::Message(got) => assert_eq!(got.text, "masked"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn bot_command_entities_are_the_command() {
    let m = message(
        r#"{"update_id":1,"message":{"message_id":2,"from":{"id":3},"chat":{"id":3,"type":"private"},
            "text":"/Deploy@my_bot prod","entities":[{"type":"bot_command","offset":0,"length":14}]}}"#,
    );
    assert_eq!(m.command.as_deref(), Some("deploy"));
    assert_eq!(m.text, "/Deploy@my_bot prod");
    // Not at offset 0: not the message's command.
    let m = message(
        r#"{"update_id":1,"message":{"from":{"id":3},"chat":{"id":3},
            "text":"see /help","entities":[{"type":"bot_command","offset":4,"length":5}]}}"#,
    );
    assert_eq!(m.command, None);
    // A photo's caption is the text, and its command counts.
    let m = message(
        r#"{"update_id":1,"message":{"from":{"id":3},"chat":{"id":3},"photo":[{"file_id":"f"}],
            "caption":"/scan this","caption_entities":[{"type":"bot_command","offset":0,"length":5}]}}"#,
    );
    assert_eq!(
        (m.text.as_str(), m.command.as_deref()),
        ("/scan this", Some("scan"))
    );
    // Lengths are UTF-16 units; a lying length gives no command.
    let m = message(
        r#"{"update_id":1,"message":{"from":{"id":3},"chat":{"id":3},
            "text":"/x","entities":[{"type":"bot_command","offset":0,"length":99}]}}"#,
    );
    assert_eq!(m.command, None);
    // Callback data is never a command.
    let m = message(
        r#"{"update_id":8,"callback_query":{"id":"cb1","from":{"id":4},
            "message":{"chat":{"id":3},"text":"/pick","entities":[{"type":"bot_command","offset":0,"length":5}]},"data":"/a"}}"#,
    );
    assert_eq!(m.command, None);
}

#[test]
fn payload_reaches_every_text_and_reseal_keeps_entities_valid() {
    let a = adapter();
    let body = r#"{"update_id":5,"message":{"message_id":9,"from":{"id":2,"first_name":"Bo 4111"},
            "chat":{"id":3,"type":"private"},"media_group_id":"4111222233334444",
            "photo":[{"file_id":"AgAD4111","file_unique_id":"u4111","width":1,"height":1}],
            "caption":"/pay 4111 ok","caption_entities":[{"type":"bot_command","offset":0,"length":4},
              {"type":"bold","offset":10,"length":2},{"type":"text_link","offset":5,"length":4,"url":"https://x/4111"}],
            "reply_to_message":{"message_id":8,"from":{"id":7},"chat":{"id":3},"text":"old 4111",
              "entities":[{"type":"code","offset":4,"length":4}]},
            "quote":{"text":"4111 quoted","entities":[{"type":"italic","offset":5,"length":6}],"position":0}}}"#;
    let h = headers(&[(SECRET_HEADER, SECRET)]);
    let req = WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: &h,
        body: body.as_bytes(),
        now: at(0),
        bearer: None,
    };
    let mut p = a.payload(&req).unwrap();
    let mut seen = Vec::new();
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        seen.push(s.clone());
        *s = s.replace("4111", "*");
    })
    .unwrap();
    seen.sort();
    assert_eq!(
        seen,
        [
            "/pay 4111 ok",
            "4111 quoted",
            "Bo 4111",
            "https://x/4111",
            "old 4111",
        ]
    );
    let sealed = a.reseal_payload(&req, &p).unwrap();
    assert_eq!(
        sealed.headers,
        vec![(SECRET_HEADER.to_string(), SECRET.to_string())]
    );
    let got = match receive_with(&h, &sealed.body).unwrap() {
        Inbound::Message(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.text, "/pay * ok");
    assert_eq!(got.command.as_deref(), Some("pay"));
    let v: Value = serde_json::from_slice(&sealed.body).unwrap();
    let msg = &v["message"];
    // Entities that no longer index the same characters are dropped.
    assert_eq!(
        msg["caption_entities"],
        json!([{"type":"bot_command","offset":0,"length":4}])
    );
    assert_eq!(msg["reply_to_message"]["entities"], json!([]));
    assert_eq!(msg["quote"]["entities"], json!([]));
    assert_eq!(msg["quote"]["text"], "* quoted");
    // Ids are kept.
    assert_eq!(msg["media_group_id"], "4111222233334444");
    assert_eq!(msg["photo"][0]["file_id"], "AgAD4111");
    // Unchanged texts keep their entities.
    let same = a.reseal_payload(&req, &a.payload(&req).unwrap()).unwrap();
    let v: Value = serde_json::from_slice(&same.body).unwrap();
    assert_eq!(
        v["message"]["caption_entities"].as_array().unwrap().len(),
        3
    );
    // A request without the secret token is never resealed.
    let bad = headers(&[(SECRET_HEADER, "nope")]);
    assert!(a
        .reseal_payload(
            &WebhookRequest {
                headers: &bad,
                ..req
            },
            &p
        )
        .is_none());
    assert!(a.reseal_payload(&req, &Payload::Empty).is_none());
}
