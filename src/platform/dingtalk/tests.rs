use super::*;
use http::{HeaderMap, HeaderValue, Method};

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("vector {ptr}"))
}

fn vectors() -> Value {
    super::super::wxcrypt::vectors()
}

fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn robot() -> DingtalkAdapter {
    DingtalkAdapter::new(&secrets(&[("app_secret", "test_app_secret")]), None).unwrap()
}

fn events(v: &Value) -> DingtalkAdapter {
    let p = "/dingtalk/event_crypto";
    DingtalkAdapter::new(
        &secrets(&[
            ("token", s(v, &format!("{p}/token"))),
            ("aes_key", s(v, &format!("{p}/aes_key"))),
            ("owner_key", s(v, &format!("{p}/owner_key"))),
        ]),
        None,
    )
    .unwrap()
}

fn ms(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(t as u64)
}

fn headers(ts: &str, sign: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("timestamp", HeaderValue::from_str(ts).unwrap());
    h.insert("sign", HeaderValue::from_str(sign).unwrap());
    h
}

fn robot_body(msgtype: &str, sender: &str) -> Value {
    json!({
        "msgId": "msgABC==",
        "msgtype": msgtype,
        "text": { "content": " hello bot " },
        "senderStaffId": sender,
        "senderId": "$:LWCP_v1:$abc",
        "senderNick": "Zhang San",
        "conversationId": "cidXYZ==",
        "conversationType": "2",
        "chatbotCorpId": "dingcorp",
        "chatbotUserId": "$:LWCP_v1:$bot",
        "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=abc",
        "sessionWebhookExpiredTime": 1577265836757i64,
        "isInAtList": true,
        "atUsers": [{ "dingtalkId": "$:LWCP_v1:$bot" }, { "dingtalkId": "$:LWCP_v1:$other", "staffId": "staff2" }],
    })
}

#[test]
fn new_names_missing_secrets() {
    assert!(DingtalkAdapter::new(&BTreeMap::new(), None)
        .unwrap_err()
        .to_string()
        .contains("`app_secret`"));
    let err =
        DingtalkAdapter::new(&secrets(&[("token", "t"), ("aes_key", "x")]), None).unwrap_err();
    assert!(err.to_string().contains("`owner_key`"), "{err}");
    let err = DingtalkAdapter::new(
        &secrets(&[("token", "t"), ("aes_key", "short"), ("owner_key", "o")]),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("aes_key"), "{err}");
    assert!(matches!(
        err,
        AdapterConfigError::BadSecret {
            platform: "dingtalk",
            name: "aes_key",
            ..
        }
    ));
    // Messages never carry the secret's value.
    assert!(!err.to_string().contains("short"), "{err}");
}

#[test]
fn robot_sign_vector() {
    let v = vectors();
    let p = "/dingtalk/robot_sign";
    let (secret, ts, sign) = (
        s(&v, &format!("{p}/app_secret")),
        s(&v, &format!("{p}/timestamp")),
        s(&v, &format!("{p}/sign")),
    );
    assert_eq!(robot_sign(secret, ts), sign);
    assert!(verify_robot_sign(secret, ts, sign));
    assert!(!verify_robot_sign(secret, "1577262236758", sign));
    assert!(!verify_robot_sign("other", ts, sign));
}

#[test]
fn robot_message_round_trip_through_receive() {
    let v = vectors();
    let a = robot();
    let ts = s(&v, "/dingtalk/robot_sign/timestamp");
    let h = headers(ts, s(&v, "/dingtalk/robot_sign/sign"));
    let body = robot_body("text", "staff1").to_string();
    let now = ms(ts.parse::<i64>().unwrap() + 30 * 60 * 1000);
    let r = WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: &h,
        body: body.as_bytes(),
        now,
        bearer: None,
    };
    let Inbound::Message(m) = a.receive(&r).unwrap() else {
        panic!("not a message")
    };
    assert_eq!(m.message_id, "msgABC==");
    assert_eq!(m.sender_id, "staff1");
    assert_eq!(m.sender_name, "Zhang San");
    assert_eq!(m.room_id, "cidXYZ==");
    assert_eq!(m.tenant, "dingcorp");
    assert_eq!(m.chat_type, "group");
    assert_eq!(m.text, "hello bot");
    assert_eq!(m.mentions, vec!["staff2".to_string()]);
    assert_eq!(
        m.attributes.get("is_in_at_list").map(String::as_str),
        Some("true")
    );

    // Private chat, and senderId when there is no staff id (another
    // body: signed at another time, as DingTalk does).
    let mut b = robot_body("text", "");
    b["conversationType"] = json!("1");
    let body = b.to_string();
    let ts2 = (ts.parse::<i64>().unwrap() + 1).to_string();
    let h2 = headers(&ts2, &robot_sign("test_app_secret", &ts2));
    let r = WebhookRequest {
        headers: &h2,
        body: body.as_bytes(),
        ..r
    };
    let Inbound::Message(m) = a.receive(&r).unwrap() else {
        panic!()
    };
    assert_eq!(
        (m.chat_type.as_str(), m.sender_id.as_str()),
        ("private", "$:LWCP_v1:$abc")
    );
}

#[test]
fn robot_rejections_and_skips() {
    let v = vectors();
    let a = robot();
    let ts = s(&v, "/dingtalk/robot_sign/timestamp");
    let sign = s(&v, "/dingtalk/robot_sign/sign");
    let t0: i64 = ts.parse().unwrap();
    let body = robot_body("text", "staff1").to_string();
    let run = |h: &HeaderMap, body: &[u8], now: SystemTime| {
        a.receive(&WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: h,
            body,
            now,
            bearer: None,
        })
    };
    let good = headers(ts, sign);
    // Each distinct body needs its own signed timestamp.
    let fresh = |n: i64| {
        let t = (t0 + n).to_string();
        let sign = robot_sign("test_app_secret", &t);
        headers(&t, &sign)
    };
    // Stale: more than an hour either way.
    assert_eq!(
        run(&good, body.as_bytes(), ms(t0 + 3_601_000))
            .unwrap_err()
            .kind(),
        "stale_timestamp"
    );
    assert_eq!(
        run(&good, body.as_bytes(), ms(t0 - 3_601_000))
            .unwrap_err()
            .kind(),
        "stale_timestamp"
    );
    let now = ms(t0);
    assert_eq!(
        run(&headers(ts, "AAAA"), body.as_bytes(), now).unwrap_err(),
        Rejection::BadSignature("sign")
    );
    assert_eq!(
        run(&headers("1577262236758", sign), body.as_bytes(), now).unwrap_err(),
        Rejection::BadSignature("sign")
    );
    // The sign is checked first: a timestamp that is no number is
    // refused as a bad sign, and with its own sign as malformed.
    assert_eq!(
        run(&headers("abc", sign), body.as_bytes(), now)
            .unwrap_err()
            .kind(),
        "bad_signature"
    );
    assert_eq!(
        run(
            &headers("abc", &robot_sign("test_app_secret", "abc")),
            body.as_bytes(),
            now
        )
        .unwrap_err(),
        Rejection::Malformed("timestamp is not a number".into()).unverified()
    );
    let min = i64::MIN.to_string();
    let min_h = headers(&min, &robot_sign("test_app_secret", &min));
    assert_eq!(
        run(&min_h, body.as_bytes(), now).unwrap_err().kind(),
        "stale_timestamp"
    );
    assert_eq!(
        run(&HeaderMap::new(), body.as_bytes(), now).unwrap_err(),
        Rejection::Missing("timestamp").unverified()
    );
    let junk: Vec<u8> = (0..200).map(|_| rand::random()).collect();
    assert_eq!(run(&good, &junk, now).unwrap_err().kind(), "malformed");
    assert_eq!(run(&good, b"[1,2]", now).unwrap_err().kind(), "malformed");
    assert_eq!(
        run(&fresh(1), b"{\"msgtype\":\"text\",\"senderId\":\"u\"}", now).unwrap_err(),
        Rejection::Missing("msgId")
    );
    let n = std::cell::Cell::new(1);
    let skip = |b: Value| {
        n.set(n.get() + 1);
        run(&fresh(n.get()), b.to_string().as_bytes(), now).unwrap()
    };
    let reason = |i: Inbound| match i {
        Inbound::Skip { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reason(skip(robot_body("picture", "staff1"))),
        "unsupported_msg_type"
    );
    let mut own = robot_body("text", "");
    own["senderId"] = json!("$:LWCP_v1:$bot");
    assert_eq!(reason(skip(own)), "bot_message");
    assert_eq!(
        a.receive(&WebhookRequest {
            method: &Method::GET,
            query: None,
            headers: &good,
            body: b"",
            now,
            bearer: None,
        })
        .unwrap_err(),
        Rejection::Method
    );
}

#[test]
fn event_check_url_vector_and_encrypted_success() {
    let v = vectors();
    let p = "/dingtalk/event_crypto";
    let a = events(&v);
    let ts = s(&v, &format!("{p}/timestamp"));
    let enc = s(&v, &format!("{p}/encrypt"));
    let sig = s(&v, &format!("{p}/signature"));
    let nonce = s(&v, &format!("{p}/nonce"));
    assert_eq!(
        a.decrypt_event(sig, ts, nonce, enc).unwrap(),
        s(&v, &format!("{p}/plaintext")).as_bytes()
    );
    let q = format!("signature={sig}&timestamp={ts}&nonce={nonce}");
    let body = json!({ "encrypt": enc }).to_string();
    let h = HeaderMap::new();
    let now = ms(ts.parse().unwrap());
    let r = WebhookRequest {
        method: &Method::POST,
        query: Some(&q),
        headers: &h,
        body: body.as_bytes(),
        now,
        bearer: None,
    };
    let Inbound::Answer { response, event } = a.receive(&r).unwrap() else {
        panic!("not an answer")
    };
    assert_eq!(event, "check_url");
    assert_eq!(response.content_type, "application/json");
    let ans: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(s(&ans, "/timeStamp"), ts);
    let plain = a
        .decrypt_event(
            s(&ans, "/msg_signature"),
            s(&ans, "/timeStamp"),
            s(&ans, "/nonce"),
            s(&ans, "/encrypt"),
        )
        .unwrap();
    assert_eq!(plain, b"success");
    // The other direction: our encryption of the vector plaintext verifies and decrypts.
    let mine = a
        .encrypt_response(s(&v, &format!("{p}/plaintext")), ts, nonce, &[9; 16])
        .unwrap();
    assert_eq!(
        a.decrypt_event(s(&mine, "/msg_signature"), ts, nonce, s(&mine, "/encrypt"))
            .unwrap(),
        s(&v, &format!("{p}/plaintext")).as_bytes()
    );

    // Stale, forged, wrong owner key, other events.
    assert_eq!(
        a.receive(&WebhookRequest {
            now: SystemTime::now(),
            ..r
        })
        .unwrap_err()
        .kind(),
        "stale_timestamp"
    );
    let forged = q.replace(sig, &"1".repeat(40));
    assert_eq!(
        a.receive(&WebhookRequest {
            query: Some(&forged),
            ..r
        })
        .unwrap_err()
        .kind(),
        "bad_signature"
    );
    let other_owner = DingtalkAdapter::new(
        &secrets(&[
            ("token", "123456"),
            ("aes_key", s(&v, &format!("{p}/aes_key"))),
            ("owner_key", "suiteOTHER"),
        ]),
        None,
    )
    .unwrap();
    assert_eq!(
        other_owner.receive(&r).unwrap_err(),
        Rejection::Decrypt("receive id does not match")
    );
    let ev = a
        .encrypt_response("{\"EventType\":\"user_add_org\"}", ts, "n2", &[1; 16])
        .unwrap();
    let q2 = format!(
        "msg_signature={}&timestamp={ts}&nonce=n2",
        s(&ev, "/msg_signature")
    );
    let b2 = json!({ "encrypt": s(&ev, "/encrypt") }).to_string();
    let Inbound::Skip { response, reason } = a
        .receive(&WebhookRequest {
            query: Some(&q2),
            body: b2.as_bytes(),
            ..r
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(reason, "unsupported_event");
    assert!(!response.body.is_empty());
    assert_eq!(
        a.receive(&WebhookRequest { body: b"{}", ..r }).unwrap_err(),
        Rejection::Missing("encrypt").unverified()
    );
    assert_eq!(
        a.receive(&WebhookRequest {
            body: b"{\"encrypt\":",
            ..r
        })
        .unwrap_err()
        .kind(),
        "malformed"
    );
    // A robot-only route has no event path.
    assert_eq!(
        robot().receive(&r).unwrap_err(),
        Rejection::Missing("timestamp").unverified()
    );
}

#[test]
fn session_webhook_host_path_and_session_checked() {
    let base = DEFAULT_API_BASE;
    for ok in [
        "https://oapi.dingtalk.com/robot/sendBySession?session=abc",
        "https://oapi.dingtalk.com/robot/sendBySession?session=c5b3bd4b2d1f1e7dbf6ba1f3a1a6b2a1",
        "https://OAPI.DingTalk.com/robot/sendBySession?session=s-1_2",
        "https://oapi.dingtalk.com:443/robot/sendBySession?session=abc",
        "HTTPS://oapi.dingtalk.com/robot/sendBySession?session=YWJj%3D",
    ] {
        assert_eq!(check_session_webhook(ok, base), Ok(()), "{ok}");
        assert!(session_webhook_allowed(ok, base), "{ok}");
    }
    use SessionWebhookError::{Host, Path, Session};
    for (bad, why) in [
        // Another host, or one a lenient client might read differently.
        (
            "https://oapi.dingtalk.com@evil.com/robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://user:pw@oapi.dingtalk.com/robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://evil.com/https://oapi.dingtalk.com/robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://oapi.dingtalk.com.evil.com/robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://oapi.dingtalk.com\\@evil.com/robot/sendBySession?session=a",
            Host,
        ),
        ("https://evil.com\\oapi.dingtalk.com/", Host),
        (
            "http://oapi.dingtalk.com/robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://oapi.dingtalk.com:8443/robot/sendBySession?session=a",
            Host,
        ),
        ("//oapi.dingtalk.com/robot/sendBySession?session=a", Host),
        ("/robot/sendBySession?session=a", Host),
        (
            "ftp://oapi.dingtalk.com/robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://oapi.dingtalk.com /robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://oapi.dingtalk.com\t/robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://oapi%2edingtalk.com/robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://oapi.dingtalk.com./robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://ｏapi.dingtalk.com/robot/sendBySession?session=a",
            Host,
        ),
        (
            "https://api.dingtalk.com/robot/sendBySession?session=a",
            Host,
        ),
        ("", Host),
        ("https://", Host),
        // The right host, another endpoint.
        ("https://oapi.dingtalk.com/x", Path),
        ("https://oapi.dingtalk.com/robot/send?access_token=a", Path),
        (
            "https://oapi.dingtalk.com/robot/sendBySession/../../user/get?session=a",
            Path,
        ),
        (
            "https://oapi.dingtalk.com/robot/sendbysession?session=a",
            Path,
        ),
        (
            "https://oapi.dingtalk.com/robot/sendBySession/?session=a",
            Path,
        ),
        (
            "https://oapi.dingtalk.com//robot/sendBySession?session=a",
            Path,
        ),
        (
            "https://oapi.dingtalk.com/robot/%73endBySession?session=a",
            Path,
        ),
        // The right endpoint, a query that is not one session token.
        ("https://oapi.dingtalk.com/robot/sendBySession", Session),
        ("https://oapi.dingtalk.com/robot/sendBySession?", Session),
        (
            "https://oapi.dingtalk.com/robot/sendBySession?session=",
            Session,
        ),
        (
            "https://oapi.dingtalk.com/robot/sendBySession?token=a",
            Session,
        ),
        (
            "https://oapi.dingtalk.com/robot/sendBySession?session=a&access_token=b",
            Session,
        ),
        (
            "https://oapi.dingtalk.com/robot/sendBySession?x=1&session=a",
            Session,
        ),
        (
            "https://oapi.dingtalk.com/robot/sendBySession?session=a#frag",
            Session,
        ),
        (
            "https://oapi.dingtalk.com/robot/sendBySession?session=a/b",
            Session,
        ),
    ] {
        assert_eq!(check_session_webhook(bad, base), Err(why), "{bad}");
        assert!(!session_webhook_allowed(bad, base), "{bad}");
    }
    let session = format!(
        "https://oapi.dingtalk.com/robot/sendBySession?session={}",
        "a".repeat(513)
    );
    assert_eq!(check_session_webhook(&session, base), Err(Session));
    // The route's api_base (a local fake in tests) is the only host,
    // with its path prefix if it has one.
    let local = "http://127.0.0.1:9";
    assert!(session_webhook_allowed(
        "http://127.0.0.1:9/robot/sendBySession?session=s",
        local
    ));
    assert_eq!(
        check_session_webhook("http://127.0.0.1:10/robot/sendBySession?session=s", local),
        Err(Host)
    );
    assert_eq!(
        check_session_webhook(
            "https://oapi.dingtalk.com/robot/sendBySession?session=s",
            local
        ),
        Err(Host)
    );
    assert!(session_webhook_allowed(
        "http://127.0.0.1:9/dt/robot/sendBySession?session=s",
        "http://127.0.0.1:9/dt/"
    ));
    assert_eq!(
        check_session_webhook(
            "http://127.0.0.1:9/robot/sendBySession?session=s",
            "http://127.0.0.1:9/dt"
        ),
        Err(Path)
    );
}

#[test]
fn reply_calls_go_to_session_webhook_only() {
    let a = robot();
    let mut msg = PlatformMessage {
        reply_to: json!({ "session_webhook": "https://oapi.dingtalk.com/robot/sendBySession?session=abc" }),
        ..Default::default()
    };
    let calls = a.reply_calls(&msg, "hi").unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, Method::POST);
    assert_eq!(
        calls[0].url,
        "https://oapi.dingtalk.com/robot/sendBySession?session=abc"
    );
    assert!(calls[0].auth.is_none());
    assert!(calls[0]
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
    assert_eq!(
        serde_json::from_slice::<Value>(&calls[0].body).unwrap(),
        json!({"msgtype":"text","text":{"content":"hi"}})
    );
    assert_eq!(calls[0].success, Some(("/errcode", json!(0))));
    msg.reply_to = json!({ "session_webhook": "https://oapi.dingtalk.com@evil.com/robot" });
    assert_eq!(
        a.reply_calls(&msg, "hi").unwrap_err(),
        Rejection::from(SessionWebhookError::Host)
    );
    assert_eq!(
        a.reply_calls(&msg, "hi").unwrap_err().kind(),
        "reply_url_refused"
    );
    // The right host, another endpoint: the gateway's reply must not
    // become a call to any API the body names.
    for (url, why) in [
        (
            "https://oapi.dingtalk.com/robot/send?access_token=x",
            SessionWebhookError::Path,
        ),
        (
            "https://oapi.dingtalk.com/robot/sendBySession?session=a&x=1",
            SessionWebhookError::Session,
        ),
    ] {
        msg.reply_to = json!({ "session_webhook": url });
        assert_eq!(a.reply_calls(&msg, "hi").unwrap_err(), why.into(), "{url}");
    }
    assert_eq!(
        a.reply_calls(&PlatformMessage::default(), "hi")
            .unwrap_err(),
        Rejection::Missing("sessionWebhook")
    );
    // With a local api_base, the real host is refused.
    let local = DingtalkAdapter::new(
        &secrets(&[("app_secret", "x")]),
        Some("http://127.0.0.1:9/"),
    )
    .unwrap();
    msg.reply_to =
        json!({ "session_webhook": "https://oapi.dingtalk.com/robot/sendBySession?session=a" });
    assert_eq!(
        local.reply_calls(&msg, "hi").unwrap_err(),
        SessionWebhookError::Host.into()
    );
    msg.reply_to = json!({ "session_webhook": "http://127.0.0.1:9/robot/sendBySession?session=a" });
    assert_eq!(local.reply_calls(&msg, "hi").unwrap().len(), 1);
    assert!(a.inline_reply(&msg, "x", SystemTime::now()).is_none());
    assert_eq!(a.ack(&msg), WebhookResponse::empty());
}

#[test]
fn robot_payload_reseal_round_trip() {
    let a = robot();
    let t0 = 1_700_000_000_000i64;
    let ts = t0.to_string();
    let h = headers(&ts, &robot_sign("test_app_secret", &ts));
    let mut b = robot_body("text", "staff1");
    b["text"]["content"] = json!("card 4111");
    b["conversationTitle"] = json!("team 4111");
    b["msgId"] = json!("msg4111");
    let body = b.to_string();
    let r = WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: &h,
        body: body.as_bytes(),
        now: ms(t0 + 1_000),
        bearer: None,
    };
    let mut p = a.payload(&r).unwrap();
    let mut seen = Vec::new();
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        if s.contains("4111") {
            seen.push(s.clone());
            *s = s.replace("4111", "****");
        }
    })
    .unwrap();
    seen.sort();
    assert_eq!(seen, ["card 4111", "team 4111"]);
    let sealed = a.reseal_payload(&r, &p).unwrap();
    let mut h2 = HeaderMap::new();
    for (k, v) in &sealed.headers {
        h2.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    assert_eq!(h2.get("timestamp").unwrap(), &(t0 + 1_000).to_string());
    let Inbound::Message(m) = a
        .receive(&WebhookRequest {
            headers: &h2,
            body: &sealed.body,
            ..r
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(m.text, "card ****");
    assert_eq!(m.message_id, "msg4111");
    assert_eq!(
        m.reply_to["session_webhook"],
        "https://oapi.dingtalk.com/robot/sendBySession?session=abc"
    );
    let bad = headers(&ts, "AAAA");
    assert!(a
        .reseal_payload(&WebhookRequest { headers: &bad, ..r }, &p)
        .is_none());
}

#[test]
fn event_payload_is_decrypted_and_reseals() {
    let v = vectors();
    let a = events(&v);
    let now = SystemTime::now();
    let ts = now_millis(now).to_string();
    let sealed = a
        .encrypt_response(
            "{\"EventType\":\"user_add_org\",\"Name\":\"n 4111\"}",
            &ts,
            "n1",
            &[1; 16],
        )
        .unwrap();
    let q = format!(
        "signature={}&timestamp={ts}&nonce=n1",
        s(&sealed, "/msg_signature")
    );
    let body = json!({ "encrypt": s(&sealed, "/encrypt") }).to_string();
    let h = HeaderMap::new();
    let r = WebhookRequest {
        method: &Method::POST,
        query: Some(&q),
        headers: &h,
        body: body.as_bytes(),
        now,
        bearer: None,
    };
    let mut p = a.payload(&r).unwrap();
    assert_eq!(
        p,
        Payload::Json(json!({"EventType":"user_add_org","Name":"n 4111"}))
    );
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        *s = s.replace("4111", "****")
    })
    .unwrap();
    let resealed = a.reseal_payload(&r, &p).unwrap();
    let q2 = resealed.query.clone().unwrap();
    assert!(q2.starts_with("signature="), "{q2}");
    let r2 = WebhookRequest {
        query: Some(&q2),
        body: &resealed.body,
        ..r
    };
    assert!(matches!(a.receive(&r2).unwrap(), Inbound::Skip { .. }));
    assert_eq!(
        a.payload(&r2).unwrap(),
        Payload::Json(json!({"EventType":"user_add_org","Name":"n ****"}))
    );
    // A robot-only route cannot reseal events.
    assert!(robot().reseal_payload(&r, &p).is_none());
}

mod authentication;
