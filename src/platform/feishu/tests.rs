use super::*;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

fn vectors() -> Value {
    let path = std::env::var("MOLTGATE_VECTORS").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/vectors/platforms.json"
        )
        .to_string()
    });
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("vector {ptr}"))
}

const TOKEN: &str = "vtoken";
const KEY: &str = "test key";

fn adapter(encrypt_key: Option<&str>) -> FeishuAdapter {
    let mut secrets = BTreeMap::new();
    secrets.insert("verification_token".to_string(), TOKEN.to_string());
    secrets.insert("app_id".to_string(), "cli_123".to_string());
    secrets.insert("app_secret".to_string(), "shh".to_string());
    if let Some(k) = encrypt_key {
        secrets.insert("encrypt_key".to_string(), k.to_string());
    }
    FeishuAdapter::new(&secrets, Some("http://127.0.0.1:9")).unwrap()
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

fn signed_headers(ts: &str, nonce: &str, key: &str, body: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(H_TIMESTAMP, HeaderValue::from_str(ts).unwrap());
    h.insert(H_NONCE, HeaderValue::from_str(nonce).unwrap());
    h.insert(
        H_SIGNATURE,
        HeaderValue::from_str(&signature(ts, nonce, key, body)).unwrap(),
    );
    h
}

fn post<'a>(h: &'a HeaderMap, body: &'a [u8], now: SystemTime) -> WebhookRequest<'a> {
    WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: h,
        body,
        now,
        bearer: None,
    }
}

fn v2_message(text: &str, chat_type: &str, thread_id: &str, sender_type: &str) -> Value {
    json!({
        "schema": "2.0",
        "header": {
            "event_id": "ev_1", "token": TOKEN, "create_time": "1700000000000",
            "event_type": "im.message.receive_v1", "tenant_key": "tenant_1", "app_id": "cli_123"
        },
        "event": {
            "sender": {
                "sender_id": { "open_id": "ou_sender", "user_id": "u_1", "union_id": "on_1" },
                "sender_type": sender_type, "tenant_key": "tenant_1"
            },
            "message": {
                "message_id": "om_abc", "root_id": "", "parent_id": "", "thread_id": thread_id,
                "chat_id": "oc_chat", "chat_type": chat_type, "message_type": "text",
                "content": json!({ "text": text }).to_string(),
                "mentions": [{ "key": "@_user_1", "id": { "open_id": "ou_bot" }, "name": "Bot" }]
            }
        }
    })
}

#[test]
fn decrypt_vector_both_directions() {
    let v = vectors();
    let key = s(&v, "/feishu/decrypt/encrypt_key");
    let enc = s(&v, "/feishu/decrypt/encrypt");
    let plain = s(&v, "/feishu/decrypt/plaintext");
    assert_eq!(decrypt(key, enc).unwrap(), plain.as_bytes());
    let raw = STANDARD.decode(enc).unwrap();
    let iv: [u8; 16] = raw[..16].try_into().unwrap();
    assert_eq!(encrypt(key, plain.as_bytes(), &iv), enc);
    assert!(decrypt("other key", enc).is_err());
}

#[test]
fn signature_vector() {
    let v = vectors();
    let p = "/feishu/signature";
    let (ts, nonce, key, body) = (
        s(&v, &format!("{p}/timestamp")),
        s(&v, &format!("{p}/nonce")),
        s(&v, &format!("{p}/encrypt_key")),
        s(&v, &format!("{p}/body")),
    );
    let sig = s(&v, &format!("{p}/signature"));
    assert_eq!(signature(ts, nonce, key, body.as_bytes()), sig);
    assert!(verify_signature(ts, nonce, key, body.as_bytes(), sig));
    assert!(verify_signature(
        ts,
        nonce,
        key,
        body.as_bytes(),
        &sig.to_uppercase()
    ));
    assert!(!verify_signature(ts, "n2", key, body.as_bytes(), sig));
    // The signed vector body reaches decryption through receive(); it
    // decrypts to "hello world", which is not an event object.
    let a = adapter(Some(key));
    let h = signed_headers(ts, nonce, key, body.as_bytes());
    assert_eq!(h.get(H_SIGNATURE).unwrap(), sig);
    let err = a
        .receive(&post(&h, body.as_bytes(), at(1_700_000_000)))
        .unwrap_err();
    assert_eq!(err.kind(), "malformed");
    let err = a
        .receive(&post(&h, body.as_bytes(), at(1_700_000_301)))
        .unwrap_err();
    assert_eq!(err.kind(), "stale_timestamp");
}

#[test]
fn malformed_ciphertexts() {
    for bad in [
        "",
        "!!",
        "QUJD",
        "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzgh",
        &STANDARD.encode([0u8; 48]),
    ] {
        assert_eq!(
            decrypt(KEY, bad).unwrap_err().kind(),
            "decrypt_failed",
            "{bad}"
        );
    }
    for n in 1..6 {
        let junk: Vec<u8> = (0..n * 16).map(|_| rand::random()).collect();
        let _ = decrypt(KEY, &STANDARD.encode(junk));
    }
}

#[test]
fn strip_mentions_cases() {
    assert_eq!(strip_mentions("@_user_1 hello"), "hello");
    assert_eq!(
        strip_mentions("hi @_user_12 and @_user_2 there"),
        "hi and there"
    );
    assert_eq!(strip_mentions("@_all ping"), "ping");
    assert_eq!(
        strip_mentions("mail a@_b.com @_user_"),
        "mail a@_b.com @_user_"
    );
    assert_eq!(strip_mentions("你好@_user_1"), "你好");
    assert_eq!(strip_mentions("@_allison @_all"), "@_allison");
    assert_eq!(strip_mentions("@_@_user_3 x"), "@_x");
}

#[test]
fn url_verification_plain_and_encrypted() {
    let plain = adapter(None);
    let body =
        json!({ "challenge": "ch-1", "token": TOKEN, "type": "url_verification" }).to_string();
    let h = HeaderMap::new();
    let want = Inbound::Answer {
        response: WebhookResponse::json(&json!({ "challenge": "ch-1" })),
        event: "url_verification",
    };
    assert_eq!(
        plain
            .receive(&post(&h, body.as_bytes(), SystemTime::now()))
            .unwrap(),
        want
    );
    // Wrong token.
    let forged = body.replace(TOKEN, "nope");
    assert_eq!(
        plain
            .receive(&post(&h, forged.as_bytes(), SystemTime::now()))
            .unwrap_err(),
        Rejection::BadSignature("verification token")
    );
    // Encrypted and unsigned (as Feishu sends it).
    let enc = adapter(Some(KEY));
    let sealed = json!({ "encrypt": encrypt(KEY, body.as_bytes(), &[5; 16]) }).to_string();
    assert_eq!(
        enc.receive(&post(&h, sealed.as_bytes(), SystemTime::now()))
            .unwrap(),
        want
    );
    // A plain challenge is not accepted unsigned when an encrypt_key is set.
    assert_eq!(
        enc.receive(&post(&h, body.as_bytes(), SystemTime::now()))
            .unwrap_err(),
        Rejection::Missing("X-Lark-Signature").unverified()
    );
    // Encrypted body but no key configured.
    assert_eq!(
        plain
            .receive(&post(&h, sealed.as_bytes(), SystemTime::now()))
            .unwrap_err()
            .kind(),
        "decrypt_failed"
    );
}

#[test]
fn v2_message_encrypted_and_signed() {
    let a = adapter(Some(KEY));
    let event = v2_message("@_user_1 what is up", "group", "omt_thread", "user");
    let body =
        json!({ "encrypt": encrypt(KEY, event.to_string().as_bytes(), &[1; 16]) }).to_string();
    let now = 1_700_000_000;
    let h = signed_headers(&now.to_string(), "nonce1", KEY, body.as_bytes());
    let Inbound::Message(m) = a.receive(&post(&h, body.as_bytes(), at(now + 10))).unwrap() else {
        panic!()
    };
    assert_eq!(m.message_id, "om_abc");
    assert_eq!(m.sender_id, "ou_sender");
    assert_eq!(m.room_id, "oc_chat");
    assert_eq!(m.thread_id, "omt_thread");
    assert_eq!(m.chat_type, "group");
    assert_eq!(m.tenant, "tenant_1");
    assert_eq!(m.text, "what is up");
    assert_eq!(m.mentions, vec!["ou_bot".to_string()]);
    assert_eq!(m.attributes.get("user_id").map(String::as_str), Some("u_1"));
    assert_eq!(
        m.attributes.get("event_id").map(String::as_str),
        Some("ev_1")
    );
    assert_eq!(
        m.reply_to,
        json!({ "message_id": "om_abc", "in_thread": true })
    );
    // Unsigned, forged, stale.
    let unsigned = HeaderMap::new();
    assert_eq!(
        a.receive(&post(&unsigned, body.as_bytes(), at(now)))
            .unwrap_err(),
        Rejection::Missing("X-Lark-Signature").unverified()
    );
    let forged = signed_headers(&now.to_string(), "nonce1", "wrong key", body.as_bytes());
    assert_eq!(
        a.receive(&post(&forged, body.as_bytes(), at(now)))
            .unwrap_err(),
        Rejection::BadSignature("X-Lark-Signature")
    );
    assert_eq!(
        a.receive(&post(&h, body.as_bytes(), at(now + 301)))
            .unwrap_err()
            .kind(),
        "stale_timestamp"
    );
    let mut no_nonce = h.clone();
    no_nonce.remove(H_NONCE);
    assert_eq!(
        a.receive(&post(&no_nonce, body.as_bytes(), at(now)))
            .unwrap_err()
            .kind(),
        "missing_field"
    );
}

#[test]
fn v2_plain_private_chat_and_root_thread() {
    let a = adapter(None);
    let mut event = v2_message("hello", "p2p", "", "user");
    event["event"]["message"]["root_id"] = json!("om_root");
    let body = event.to_string();
    let h = HeaderMap::new();
    let Inbound::Message(m) = a
        .receive(&post(&h, body.as_bytes(), SystemTime::now()))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (m.chat_type.as_str(), m.thread_id.as_str(), m.text.as_str()),
        ("private", "om_root", "hello")
    );
    let mut top = v2_message("hello", "p2p", "", "user");
    top["event"]["sender"]["sender_id"] = json!({ "user_id": "u_only" });
    let body = top.to_string();
    let Inbound::Message(m) = a
        .receive(&post(&h, body.as_bytes(), SystemTime::now()))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(m.sender_id, "u_only");
    assert_eq!(
        m.reply_to,
        json!({ "message_id": "om_abc", "in_thread": false })
    );
}

#[test]
fn skips_and_malformed() {
    let a = adapter(None);
    let h = HeaderMap::new();
    let now = SystemTime::now();
    let reason = |v: Value| match a.receive(&post(&h, v.to_string().as_bytes(), now)).unwrap() {
        Inbound::Skip { reason, response } => {
            assert_eq!(response, WebhookResponse::empty());
            reason
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(reason(v2_message("x", "group", "", "app")), "bot_message");
    let mut image = v2_message("x", "group", "", "user");
    image["event"]["message"]["message_type"] = json!("image");
    assert_eq!(reason(image), "unsupported_msg_type");
    let mut other = v2_message("x", "group", "", "user");
    other["header"]["event_type"] = json!("im.chat.member.bot.added_v1");
    assert_eq!(reason(other), "unsupported_event");
    assert_eq!(
        reason(json!({ "token": TOKEN, "type": "something_else" })),
        "unsupported_event"
    );
    assert_eq!(
        reason(json!({ "token": TOKEN, "type": "event_callback", "event": { "type": "add_bot" } })),
        "unsupported_event"
    );

    let kind = |b: &[u8]| a.receive(&post(&h, b, now)).unwrap_err().kind();
    assert_eq!(kind(b"\x00\x01garbage"), "malformed");
    assert_eq!(kind(b"[]"), "malformed");
    assert_eq!(kind(b"{\"type\":\"url_verification\"}"), "missing_field");
    let mut bad_content = v2_message("x", "group", "", "user");
    bad_content["event"]["message"]["content"] = json!("{not json");
    assert_eq!(kind(bad_content.to_string().as_bytes()), "malformed");
    let mut wrong_token = v2_message("x", "group", "", "user");
    wrong_token["header"]["token"] = json!("vtoken2");
    assert_eq!(kind(wrong_token.to_string().as_bytes()), "bad_signature");
    assert_eq!(kind(b"{\"encrypt\":5}"), "malformed");
    assert_eq!(
        a.receive(&WebhookRequest {
            method: &Method::GET,
            query: None,
            headers: &h,
            body: b"",
            now,
            bearer: None,
        })
        .unwrap_err(),
        Rejection::Method
    );
}

#[test]
fn v1_message() {
    let a = adapter(None);
    let body = json!({
            "uuid": "u-1", "token": TOKEN, "ts": "1700000000.1", "type": "event_callback",
            "event": {
                "type": "message", "msg_type": "text", "app_id": "cli_123", "tenant_key": "t1",
                "open_id": "ou_v1", "user_open_id": "ou_v1", "open_chat_id": "oc_v1", "chat_type": "group",
                "open_message_id": "om_v1", "root_id": "om_root", "text": "<at open_id=\"ou_bot\">@Bot</at> hi",
                "text_without_at_bot": " hi @_user_1 ", "is_mention": true
            }
        })
        .to_string();
    let h = HeaderMap::new();
    let Inbound::Message(m) = a
        .receive(&post(&h, body.as_bytes(), SystemTime::now()))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(m.message_id, "om_v1");
    assert_eq!(m.text, "hi");
    assert_eq!(m.room_id, "oc_v1");
    assert_eq!(m.thread_id, "om_root");
    assert_eq!(m.tenant, "t1");
    assert_eq!(
        m.attributes.get("event_id").map(String::as_str),
        Some("u-1")
    );
    // Passthrough: both v1 texts are scanned, and the masked event
    // (unsigned without an encrypt_key) verifies and parses again.
    let r = post(&h, body.as_bytes(), SystemTime::now());
    let mut p = a.payload(&r).unwrap();
    let mut seen = Vec::new();
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        if s.contains("hi") {
            seen.push(s.clone());
            *s = s.replace("hi", "**");
        }
    })
    .unwrap();
    seen.sort();
    assert_eq!(
        seen,
        [" hi @_user_1 ", "<at open_id=\"ou_bot\">@Bot</at> hi"]
    );
    let sealed = a.reseal_payload(&r, &p).unwrap();
    assert!(sealed.headers.is_empty());
    let Inbound::Message(m2) = a
        .receive(&post(&h, &sealed.body, SystemTime::now()))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(m2.text, "**");
    assert_eq!(m2.message_id, "om_v1");
}

#[test]
fn reply_calls_and_token_source() {
    let a = adapter(None);
    let msg = PlatformMessage {
        reply_to: json!({ "message_id": "om_abc", "in_thread": true }),
        ..Default::default()
    };
    let calls = a.reply_calls(&msg, "hi \"there\"").unwrap();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.method, Method::POST);
    assert_eq!(
        c.url,
        "http://127.0.0.1:9/open-apis/im/v1/messages/om_abc/reply"
    );
    assert!(c
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
    let body: Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(
        body,
        json!({ "msg_type": "text", "content": "{\"text\":\"hi \\\"there\\\"\"}", "reply_in_thread": true })
    );
    assert_eq!(c.success, Some(("/code", json!(0))));
    let auth = c.auth.as_ref().unwrap();
    assert_eq!(
        auth.fetch.url,
        "http://127.0.0.1:9/open-apis/auth/v3/tenant_access_token/internal"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&auth.fetch.body).unwrap(),
        json!({ "app_id": "cli_123", "app_secret": "shh" })
    );
    assert_eq!(
        (auth.token_pointer, auth.expires_in_pointer),
        ("/tenant_access_token", "/expire")
    );
    assert_eq!(auth.placement, TokenPlacement::BearerHeader);
    assert!(!auth.cache_key.contains("shh"));
    // Ids from bodies never escape the URL path.
    for bad in ["../../admin", "om/x", "om?x=1", ""] {
        let m = PlatformMessage {
            reply_to: json!({ "message_id": bad }),
            ..Default::default()
        };
        assert!(a.reply_calls(&m, "x").is_err(), "{bad}");
    }
    let mut secrets = BTreeMap::new();
    secrets.insert("verification_token".to_string(), "t".to_string());
    let bare = FeishuAdapter::new(&secrets, None).unwrap();
    assert_eq!(
        bare.reply_calls(&msg, "x").unwrap_err(),
        Rejection::Missing("app_id")
    );
    assert!(FeishuAdapter::new(&BTreeMap::new(), None)
        .unwrap_err()
        .to_string()
        .contains("`verification_token`"));
    assert!(a.inline_reply(&msg, "x", SystemTime::now()).is_none());
    assert_eq!(a.ack(&msg), WebhookResponse::empty());
}

/// Resealed later than it was signed: encrypted again, and signed with
/// the later time, at which it verifies.
#[test]
fn reseal_of_a_later_request_is_signed_fresh() {
    let a = adapter(Some(KEY));
    let event = v2_message("@_user_1 card 4111 1111 1111 1111", "group", "", "user");
    let body =
        json!({ "encrypt": encrypt(KEY, event.to_string().as_bytes(), &[1; 16]) }).to_string();
    let t0 = 1_700_000_000;
    let h = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
    let later = at(t0 + 100);
    let r = post(&h, body.as_bytes(), later);
    let mut p = a.payload(&r).unwrap();
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        *s = s.replace("4111 1111 1111 1111", "****");
    })
    .unwrap();
    let sealed = a.reseal_payload(&r, &p).unwrap();
    let mut h2 = HeaderMap::new();
    for (k, v) in &sealed.headers {
        h2.insert(
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    assert_eq!(h2.get(H_TIMESTAMP).unwrap(), &(t0 + 100).to_string());
    assert_ne!(h2.get(H_SIGNATURE), h.get(H_SIGNATURE));
    let sealed_body: Value = serde_json::from_slice(&sealed.body).unwrap();
    assert!(sealed_body.get("encrypt").is_some(), "stays encrypted");
    let Inbound::Message(m2) = a.receive(&post(&h2, &sealed.body, later)).unwrap() else {
        panic!()
    };
    assert_eq!(m2.text, "card ****");
    assert_eq!(m2.message_id, "om_abc");
}

fn mask(a: &FeishuAdapter, p: &mut Payload) -> Vec<String> {
    let mut seen = Vec::new();
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        if s.contains("4111") {
            seen.push(s.clone());
            *s = s.replace("4111", "****");
        }
    })
    .unwrap();
    seen
}

#[test]
fn payload_reseal_round_trip_encrypted_and_signed() {
    let a = adapter(Some(KEY));
    let mut event = v2_message("@_user_1 card 4111", "group", "", "user");
    event["event"]["message"]["mentions"][0]["name"] = json!("Bot 4111");
    event["event"]["message"]["message_id"] = json!("om_4111");
    let body =
        json!({ "encrypt": encrypt(KEY, event.to_string().as_bytes(), &[1; 16]) }).to_string();
    let t0 = 1_700_000_000;
    let h = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
    let r = post(&h, body.as_bytes(), at(t0 + 5));
    let mut p = a.payload(&r).unwrap();
    let mut opened = event.clone();
    opened["event"]["message"]["content"] = json!({ "text": "@_user_1 card 4111" });
    assert_eq!(p, Payload::Json(opened), "decrypted, content opened");
    let mut seen = mask(&a, &mut p);
    seen.sort();
    assert_eq!(seen, ["@_user_1 card 4111", "Bot 4111"]);
    let sealed = a.reseal_payload(&r, &p).unwrap();
    let sealed_body: Value = serde_json::from_slice(&sealed.body).unwrap();
    assert!(sealed_body.get("encrypt").is_some(), "stays encrypted");
    let mut h2 = HeaderMap::new();
    for (k, v) in &sealed.headers {
        h2.insert(
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let Inbound::Message(m) = a.receive(&post(&h2, &sealed.body, at(t0 + 5))).unwrap() else {
        panic!()
    };
    assert_eq!(m.text, "card ****");
    assert_eq!(m.message_id, "om_4111", "ids are opaque");
    // A forged original is not resealed.
    let forged = signed_headers(&t0.to_string(), "n", "other", body.as_bytes());
    assert!(a
        .reseal_payload(&post(&forged, body.as_bytes(), at(t0)), &p)
        .is_none());
    assert!(a.reseal_payload(&r, &Payload::Empty).is_none());
}

#[test]
fn payload_reseal_round_trip_plain() {
    let a = adapter(None);
    let body = v2_message("card 4111", "p2p", "", "user").to_string();
    let h = HeaderMap::new();
    let r = post(&h, body.as_bytes(), SystemTime::now());
    let mut p = a.payload(&r).unwrap();
    mask(&a, &mut p);
    let sealed = a.reseal_payload(&r, &p).unwrap();
    assert!(sealed.headers.is_empty());
    let Inbound::Message(m) = a
        .receive(&post(&h, &sealed.body, SystemTime::now()))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(m.text, "card ****");
    assert_eq!(m.command, None);
    assert!(a.payload(&post(&h, b"{}", SystemTime::now())).is_err());
}

pub(super) mod hostile;
