use super::super::slack::tests::{at, headers, vectors};
use super::*;
use ed25519_dalek::{Signer, SigningKey};
use http::HeaderMap;

const NOW: u64 = 1_700_000_000;

fn vector_keys() -> (SigningKey, String) {
    let v = &vectors()["discord"]["rfc8032_test1"];
    let secret: [u8; 32] = hex::decode(v["secret_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    (
        SigningKey::from_bytes(&secret),
        v["public_key"].as_str().unwrap().to_string(),
    )
}

fn adapter() -> DiscordAdapter {
    let (_, public) = vector_keys();
    let secrets = BTreeMap::from([
        ("public_key".to_string(), public),
        ("application_id".to_string(), "123456".to_string()),
    ]);
    DiscordAdapter::new(&secrets, Some("http://127.0.0.1:9")).unwrap()
}

fn signed(body: &str, ts: u64) -> HeaderMap {
    let (key, _) = vector_keys();
    let ts = ts.to_string();
    let sig = key.sign(format!("{ts}{body}").as_bytes());
    headers(&[
        (TIMESTAMP_HEADER, &ts),
        (SIGNATURE_HEADER, &hex::encode(sig.to_bytes())),
    ])
}

fn receive_with(h: &HeaderMap, body: &[u8], now: u64) -> Result<Inbound, Rejection> {
    adapter().receive(&WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: h,
        body,
        now: at(now),
        bearer: None,
    })
}

fn receive(body: &Value) -> Result<Inbound, Rejection> {
    let body = body.to_string();
    receive_with(&signed(&body, NOW), body.as_bytes(), NOW)
}

fn message(body: &Value) -> PlatformMessage {
    match receive(body).unwrap() {
        Inbound::Message(m) => *m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn command(extra: Value) -> Value {
    let mut v = json!({
        "id":"1100","application_id":"123456","type":2,"token":"tok-EN_1.x",
        "guild_id":"77","channel_id":"88","channel":{"id":"88","type":0},
        "member":{"user":{"id":"42","username":"ann","global_name":"Ann"}},
        "data":{"id":"5","name":"ask","type":1,
                "options":[{"name":"question","type":3,"value":"why is the sky blue"}]}
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    v
}

#[test]
fn rfc8032_vector_verifies_and_signs() {
    let v = &vectors()["discord"]["rfc8032_test1"];
    let (key, public) = vector_keys();
    let public = parse_public_key(&public).unwrap();
    let sig = v["signature"].as_str().unwrap();
    assert_eq!(hex::encode(key.sign(b"").to_bytes()), sig);
    verify(&public, "", b"", sig).unwrap();
    assert_eq!(
        verify(&public, "", b"x", sig).unwrap_err().kind(),
        "bad_signature"
    );
}

#[test]
fn signed_ping_vector_is_answered() {
    let v = &vectors()["discord"]["ping_signed_with_test1_key"];
    let (ts, body, sig) = (
        v["timestamp"].as_str().unwrap(),
        v["body"].as_str().unwrap(),
        v["signature"].as_str().unwrap(),
    );
    let (key, _) = vector_keys();
    assert_eq!(
        hex::encode(key.sign(format!("{ts}{body}").as_bytes()).to_bytes()),
        sig
    );
    let h = headers(&[(TIMESTAMP_HEADER, ts), (SIGNATURE_HEADER, sig)]);
    let now: u64 = ts.parse().unwrap();
    match receive_with(&h, body.as_bytes(), now).unwrap() {
        Inbound::Answer { response, event } => {
            assert_eq!(event, "ping");
            assert_eq!(response.status, http::StatusCode::OK);
            assert_eq!(response.content_type, "application/json");
            assert_eq!(&response.body[..], br#"{"type":1}"#);
        }
        other => panic!("{other:?}"),
    }
    // Stale, then forged: both 401.
    let err = receive_with(&h, body.as_bytes(), now + 301).unwrap_err();
    assert_eq!(err.kind(), "stale_timestamp");
    assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
    let err = receive_with(&h, br#"{"type":1}"#, now).unwrap_err();
    assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
}

#[test]
fn forged_and_garbled_signatures_are_401() {
    let body = command(json!({})).to_string();
    let good = signed(&body, NOW);
    let ts = NOW.to_string();
    let other = SigningKey::from_bytes(&[7u8; 32]);
    let forged = hex::encode(other.sign(format!("{ts}{body}").as_bytes()).to_bytes());
    let cases = vec![
        headers(&[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, &forged)]),
        headers(&[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, "zz")]),
        headers(&[(TIMESTAMP_HEADER, &ts), (SIGNATURE_HEADER, "abcd")]),
        headers(&[(TIMESTAMP_HEADER, &ts)]),
        headers(&[(SIGNATURE_HEADER, &forged)]),
        // Valid signature, different timestamp header.
        headers(&[
            (TIMESTAMP_HEADER, &(NOW + 1).to_string()),
            (SIGNATURE_HEADER, good[SIGNATURE_HEADER].to_str().unwrap()),
        ]),
    ];
    for h in cases {
        let err = receive_with(&h, body.as_bytes(), NOW).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED, "{err:?}");
    }
    let err = adapter()
        .receive(&WebhookRequest {
            method: &Method::GET,
            query: None,
            headers: &good,
            body: body.as_bytes(),
            now: at(NOW),
            bearer: None,
        })
        .unwrap_err();
    assert_eq!(err, Rejection::Method);
}

#[test]
fn bad_keys_are_config_errors() {
    for key in ["", "zz", "abcd"] {
        let secrets = BTreeMap::from([("public_key".to_string(), key.to_string())]);
        let err = DiscordAdapter::new(&secrets, None).err().unwrap();
        assert!(err.to_string().contains("public_key"), "{err}");
    }
    let (_, public) = vector_keys();
    let secrets = BTreeMap::from([
        ("public_key".to_string(), public),
        ("application_id".to_string(), "../x".to_string()),
    ]);
    assert!(DiscordAdapter::new(&secrets, None).is_err());
}

#[test]
fn malformed_bodies_are_rejected() {
    let bodies = [
        "".to_string(),
        "{".to_string(),
        "[]".to_string(),
        r#"{"type":"2"}"#.to_string(),
        command(json!({"token":"../../x"})).to_string(),
        command(json!({"id":"abc"})).to_string(),
        command(json!({"data":"x"})).to_string(),
        command(json!({"member":null})).to_string(),
    ];
    for body in bodies {
        let err = receive_with(&signed(&body, NOW), body.as_bytes(), NOW).unwrap_err();
        assert!(
            matches!(err, Rejection::Malformed(_) | Rejection::Missing(_)),
            "{body}: {err:?}"
        );
    }
    let body = [0xffu8, 0, 1];
    let _ = parse_interaction(&body).unwrap_err();
}

#[test]
fn slash_command_becomes_a_message() {
    let m = message(&command(json!({})));
    assert_eq!(m.message_id, "1100");
    assert_eq!(m.tenant, "77");
    assert_eq!(m.sender_id, "42");
    assert_eq!(m.sender_name, "Ann");
    assert_eq!(m.room_id, "88");
    assert_eq!(m.thread_id, "");
    assert_eq!(m.chat_type, "group");
    assert_eq!(m.text, "why is the sky blue");
    assert_eq!(m.attributes["command"], "ask");
    // The command is the interaction's own field, not the text (which is
    // the option values): RBAC sees `ask` whatever the options say.
    assert_eq!(m.command.as_deref(), Some("ask"));
    assert_eq!(
        m.reply_to,
        json!({"application_id":"123456","token":"tok-EN_1.x"})
    );
}

#[test]
fn subcommands_users_dms_threads_and_context_menus() {
    let m = message(&command(json!({
        "guild_id": null, "member": null, "context": 1,
        "user":{"id":"42","username":"ann"},
        "channel":{"id":"99","type":11}, "channel_id":"99",
        "data":{"name":"todo","type":1,"options":[{"name":"add","type":1,"options":[
            {"name":"item","type":3,"value":"milk"},{"name":"count","type":4,"value":2},
            {"name":"for","type":6,"value":"555"}]}]}
    })));
    assert_eq!(m.attributes["command"], "todo add");
    assert_eq!(m.command.as_deref(), Some("todo"));
    assert_eq!(m.text, "milk 2 555");
    assert_eq!(m.mentions, vec!["555"]);
    assert_eq!(m.chat_type, "private");
    assert_eq!(m.sender_name, "ann");
    assert_eq!(m.thread_id, "99");

    let m = message(&command(json!({"data":{"name":"help","type":1}})));
    assert_eq!(m.text, "/help");

    let m = message(&command(
        json!({"data":{"name":"Summarize","type":3,"target_id":"9",
            "resolved":{"messages":{"9":{"id":"9","content":"long text"}}}}}),
    ));
    assert_eq!(m.text, "long text");
    assert_eq!(m.command.as_deref(), Some("summarize"));
    let m = message(&command(
        json!({"data":{"name":"Report  Message","type":3}}),
    ));
    assert_eq!(m.command.as_deref(), Some("report_message"));
}

#[test]
fn other_interactions_are_skipped() {
    match receive(&json!({"type":3,"id":"1","token":"t"})).unwrap() {
        Inbound::Skip { response, reason } => {
            assert_eq!(reason, "component_interaction");
            assert_eq!(&response.body[..], br#"{"type":6}"#);
        }
        other => panic!("{other:?}"),
    }
    for t in [4, 5, 99] {
        assert!(matches!(
            receive(&json!({"type":t})).unwrap(),
            Inbound::Skip {
                reason: "unsupported_interaction",
                ..
            }
        ));
    }
    let bot = command(json!({"member":{"user":{"id":"1","bot":true}}}));
    assert!(matches!(
        receive(&bot).unwrap(),
        Inbound::Skip {
            reason: "bot_message",
            ..
        }
    ));
}

#[test]
fn replies_inline_deferred_and_follow_up() {
    let a = adapter();
    let m = message(&command(json!({})));
    let inline = a.inline_reply(&m, "blue light", at(NOW)).unwrap();
    let v: Value = serde_json::from_slice(&inline.body).unwrap();
    assert_eq!(
        v,
        json!({"type":4,"data":{"content":"blue light","allowed_mentions":{"parse":[]}}})
    );
    assert!(a.inline_reply(&m, &"x".repeat(2001), at(NOW)).is_none());
    assert_eq!(&a.ack(&m).body[..], br#"{"type":5}"#);

    let calls = a.reply_calls(&m, "blue light").unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, Method::POST);
    assert_eq!(
        calls[0].url,
        "http://127.0.0.1:9/api/v10/webhooks/123456/tok-EN_1.x"
    );
    let v: Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(v["content"], "blue light");
    assert!(calls[0].auth.is_none());
    // Long replies become several follow-ups.
    let calls = a.reply_calls(&m, &"é".repeat(4500)).unwrap();
    assert_eq!(calls.len(), 3);

    // Without a configured application id, the interaction's is used.
    let (_, public) = vector_keys();
    let secrets = BTreeMap::from([("public_key".to_string(), public)]);
    let bare = DiscordAdapter::new(&secrets, None).unwrap();
    let calls = bare.reply_calls(&m, "x").unwrap();
    assert_eq!(
        calls[0].url,
        "https://discord.com/api/v10/webhooks/123456/tok-EN_1.x"
    );
    let mut evil = m.clone();
    evil.reply_to = json!({"application_id":"1","token":"a/../../b"});
    assert!(bare.reply_calls(&evil, "x").is_err());
}

#[test]
fn payload_scans_person_text_and_cannot_be_resealed() {
    let body = command(json!({
            "app_permissions": "4111111111111111",
            "channel": {"id":"88","type":0,"name":"chan 4111","topic":"topic 4111"},
            "data": {"id":"5","name":"ask","type":1,
                "options":[{"name":"question","type":3,"value":"card 4111"}],
                "resolved":{"attachments":{"9":{"id":"9","filename":"4111.pdf","content_type":"application/pdf",
                    "url":"https://cdn/4111.pdf"}}}}
        }))
        .to_string();
    let h = signed(&body, NOW);
    let req = WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: &h,
        body: body.as_bytes(),
        now: at(NOW),
        bearer: None,
    };
    let a = adapter();
    let mut p = a.payload(&req).unwrap();
    let mut seen = Vec::new();
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        if s.contains("4111") {
            seen.push(s.clone());
        }
    })
    .unwrap();
    seen.sort();
    assert_eq!(
        seen,
        [
            "4111.pdf",
            "card 4111",
            "chan 4111",
            "https://cdn/4111.pdf",
            "topic 4111"
        ]
    );
    assert!(a.reseal_payload(&req, &p).is_none());
    assert!(a.payload(&WebhookRequest { body: b"{", ..req }).is_err());
}
