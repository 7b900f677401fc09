use super::*;
use http::HeaderMap;
use std::time::UNIX_EPOCH;

fn s<'a>(v: &'a serde_json::Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("vector {ptr}"))
}

fn adapter(v: &serde_json::Value, sample: &str) -> WecomAdapter {
    let mut secrets = BTreeMap::new();
    secrets.insert(
        "token".to_string(),
        s(v, &format!("/wecom/{sample}/token")).to_string(),
    );
    secrets.insert(
        "encoding_aes_key".to_string(),
        s(v, &format!("/wecom/{sample}/encoding_aes_key")).to_string(),
    );
    secrets.insert(
        "corp_id".to_string(),
        s(v, &format!("/wecom/{sample}/corp_id")).to_string(),
    );
    secrets.insert("corp_secret".to_string(), "s3cr&t".to_string());
    secrets.insert("agent_id".to_string(), "1000002".to_string());
    WecomAdapter::new(&secrets, Some("http://127.0.0.1:9/")).unwrap()
}

fn at(ts: &str) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(ts.parse().unwrap())
}

fn req<'a>(
    method: &'a Method,
    query: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    now: SystemTime,
) -> WebhookRequest<'a> {
    WebhookRequest {
        method,
        query: Some(query),
        headers,
        body,
        now,
        bearer: None,
    }
}

fn enc_q(v: &str) -> String {
    percent_encode(v)
}

#[test]
fn new_names_missing_secret() {
    let err = WecomAdapter::new(&BTreeMap::new(), None).unwrap_err();
    assert!(err.to_string().contains("`token`"), "{err}");
    let mut secrets = BTreeMap::new();
    secrets.insert("token".to_string(), "t".to_string());
    secrets.insert("encoding_aes_key".to_string(), "bad".to_string());
    assert!(WecomAdapter::new(&secrets, None)
        .unwrap_err()
        .to_string()
        .contains("encoding_aes_key"));
}

#[test]
fn verify_url_official_and_legacy_samples() {
    let v = vectors();
    let h = HeaderMap::new();
    for sample in ["official_sample", "legacy_sample"] {
        let a = adapter(&v, sample);
        let p = format!("/wecom/{sample}/verify_url");
        let ts = s(&v, &format!("{p}/timestamp"));
        let q = format!(
            "msg_signature={}&timestamp={ts}&nonce={}&echostr={}",
            s(&v, &format!("{p}/msg_signature")),
            s(&v, &format!("{p}/nonce")),
            enc_q(s(&v, &format!("{p}/echostr")))
        );
        let got = a.receive(&req(&Method::GET, &q, &h, b"", at(ts))).unwrap();
        assert_eq!(
            got,
            Inbound::Answer {
                response: WebhookResponse::text(s(&v, &format!("{p}/reply"))),
                event: "url_verification"
            }
        );
        // Unescaped '+' in the echostr is tolerated.
        let raw_plus = q
            .replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=");
        assert!(a
            .receive(&req(&Method::GET, &raw_plus, &h, b"", at(ts)))
            .is_ok());
        // Stale: the published timestamps are years old.
        let stale = a
            .receive(&req(&Method::GET, &q, &h, b"", SystemTime::now()))
            .unwrap_err();
        assert_eq!(stale.kind(), "stale_timestamp");
        let wide = a
            .clone()
            .with_replay_window(Duration::from_secs(u32::MAX as u64 * 4));
        assert!(wide
            .receive(&req(&Method::GET, &q, &h, b"", SystemTime::now()))
            .is_ok());
        // Forged signature.
        let forged = q.replace(s(&v, &format!("{p}/msg_signature")), &"0".repeat(40));
        assert_eq!(
            a.receive(&req(&Method::GET, &forged, &h, b"", at(ts)))
                .unwrap_err(),
            Rejection::BadSignature("msg_signature")
        );
    }
}

fn official_message_query(v: &serde_json::Value) -> String {
    let p = "/wecom/official_sample/message";
    format!(
        "msg_signature={}&timestamp={}&nonce={}",
        s(v, &format!("{p}/msg_signature")),
        s(v, &format!("{p}/timestamp")),
        s(v, &format!("{p}/nonce"))
    )
}

#[test]
fn official_message_maps_to_platform_message() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let h = HeaderMap::new();
    let body = s(&v, "/wecom/official_sample/message/body_xml");
    let ts = s(&v, "/wecom/official_sample/message/timestamp");
    let q = official_message_query(&v);
    let Inbound::Message(m) = a
        .receive(&req(&Method::POST, &q, &h, body.as_bytes(), at(ts)))
        .unwrap()
    else {
        panic!("not a message")
    };
    assert_eq!(m.message_id, "1456453720");
    assert_eq!(m.sender_id, "ChenJiaShun");
    assert_eq!(m.room_id, "ChenJiaShun");
    assert_eq!(m.tenant, "ww1436e0e65a779aee");
    assert_eq!(m.text, "你好");
    assert_eq!(m.chat_type, "private");
    assert_eq!(
        m.attributes.get("agent_id").map(String::as_str),
        Some("1000002")
    );
    // The inner plaintext of the vector parses to the same fields.
    let inner = parse_xml(s(&v, "/wecom/official_sample/message/plaintext")).unwrap();
    assert_eq!(inner.get("Content"), Some("你好"));

    // Legacy sample: CDATA fields.
    let l = adapter(&v, "legacy_sample");
    let p = "/wecom/legacy_sample/message";
    let body = format!("<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>", s(&v, &format!("{p}/encrypt")));
    let q = format!(
        "msg_signature={}&timestamp={}&nonce={}",
        s(&v, &format!("{p}/msg_signature")),
        s(&v, &format!("{p}/timestamp")),
        s(&v, &format!("{p}/nonce"))
    );
    let Inbound::Message(m) = l
        .receive(&req(
            &Method::POST,
            &q,
            &h,
            body.as_bytes(),
            at(s(&v, &format!("{p}/timestamp"))),
        ))
        .unwrap()
    else {
        panic!("not a message")
    };
    assert_eq!(
        (m.sender_id.as_str(), m.text.as_str()),
        ("mycreate", "hello")
    );
    assert_eq!(
        m.attributes.get("agent_id").map(String::as_str),
        Some("218")
    );
}

#[test]
fn post_rejections() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let h = HeaderMap::new();
    let body = s(&v, "/wecom/official_sample/message/body_xml");
    let ts = s(&v, "/wecom/official_sample/message/timestamp");
    let q = official_message_query(&v);
    let now = at(ts);
    let kind = |q: &str, body: &[u8], now| {
        a.receive(&req(&Method::POST, q, &h, body, now))
            .unwrap_err()
            .kind()
    };
    assert_eq!(
        kind(&q, body.as_bytes(), SystemTime::now()),
        "stale_timestamp"
    );
    assert_eq!(
        kind(&q.replace("nonce=", "nonce=1"), body.as_bytes(), now),
        "bad_signature"
    );
    assert_eq!(
        kind("timestamp=1&nonce=2", body.as_bytes(), now),
        "missing_field"
    );
    assert_eq!(kind(&q, b"\xff\xfe", now), "malformed");
    assert_eq!(
        kind(&q, b"<xml><ToUserName>x</ToUserName></xml>", now),
        "missing_field"
    );
    assert_eq!(kind(&q, &body.as_bytes()[..50], now), "malformed");
    let junk: Vec<u8> = (0..300).map(|_| rand::random()).collect();
    assert!(a.receive(&req(&Method::POST, &q, &h, &junk, now)).is_err());
    assert_eq!(
        a.receive(&req(&Method::PUT, &q, &h, body.as_bytes(), now))
            .unwrap_err(),
        Rejection::Method
    );
    // Wrong receive id: a correctly signed message for another corp.
    let other =
        WxCrypt::from_encoding_aes_key("6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt").unwrap();
    let enc = other.encrypt(
        b"<xml><MsgType>text</MsgType></xml>",
        "wwSOMEONEELSE",
        &[1; 16],
    );
    let sig = wxcrypt::msg_signature("hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo", ts, "n", &enc);
    let q2 = format!("msg_signature={sig}&timestamp={ts}&nonce=n");
    let b2 = format!("<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>");
    assert_eq!(
        a.receive(&req(&Method::POST, &q2, &h, b2.as_bytes(), now))
            .unwrap_err(),
        Rejection::Decrypt("receive id does not match")
    );
    // Truncated base64 in a correctly signed body.
    let cut = &enc[..enc.len() - 5];
    let sig = wxcrypt::msg_signature("hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo", ts, "n", cut);
    let q3 = format!("msg_signature={sig}&timestamp={ts}&nonce=n");
    let b3 = format!("<xml><Encrypt>{cut}</Encrypt></xml>");
    assert_eq!(kind(&q3, b3.as_bytes(), now), "decrypt_failed");
}

/// A signed, encrypted POST for the official-sample route carrying `inner`.
fn signed_post(a: &WecomAdapter, inner: &str, ts: &str) -> (String, String) {
    let enc = a.crypt.encrypt(inner.as_bytes(), &a.corp_id, &[3; 16]);
    let sig = wxcrypt::msg_signature(&a.token, ts, "42", &enc);
    (
            format!("msg_signature={sig}&timestamp={ts}&nonce=42"),
            format!("<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>", a.corp_id),
        )
}

#[test]
fn event_and_unsupported_types_are_skipped() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let h = HeaderMap::new();
    let now = SystemTime::now();
    let ts = unix_secs(now).to_string();
    for (inner, reason) in [
            ("<xml><FromUserName>u</FromUserName><MsgType>event</MsgType><Event>enter_agent</Event></xml>", "event"),
            ("<xml><FromUserName>u</FromUserName><MsgType>image</MsgType><MsgId>1</MsgId></xml>", "unsupported_msg_type"),
        ] {
            let (q, b) = signed_post(&a, inner, &ts);
            assert_eq!(
                a.receive(&req(&Method::POST, &q, &h, b.as_bytes(), now)).unwrap(),
                Inbound::Skip { response: WebhookResponse::empty(), reason }
            );
        }
    let (q, b) = signed_post(&a, "<xml><MsgType>text</MsgType></xml>", &ts);
    assert_eq!(
        a.receive(&req(&Method::POST, &q, &h, b.as_bytes(), now))
            .unwrap_err()
            .kind(),
        "missing_field"
    );
}

#[test]
fn xml_parser_refuses_doctype_and_entities() {
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><xml><Content>&lol2;</Content></xml>"#;
    assert_eq!(parse_xml(bomb).unwrap_err().kind(), "malformed");
    let xxe = r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Content>&e;</Content></xml>"#;
    assert!(parse_xml(xxe).is_err());
    assert!(parse_xml("<xml><Content>&e;</Content></xml>").is_err());
    let ok = parse_xml("<?xml version=\"1.0\"?>\n<xml>\n<Content>a &lt;&amp;&#x4e2d;&#25991; <![CDATA[<b>]]></Content><!-- c --><E/><N><i>x</i>y</N></xml>\n").unwrap();
    assert_eq!(ok.get("Content"), Some("a <&中文 <b>"));
    assert_eq!(ok.get("E"), Some(""));
    assert_eq!(ok.get("N"), Some("y"));
    for bad in [
        "",
        "text",
        "<xml>",
        "<xml></other>",
        "<a/><b/>",
        "<xml/>trailing",
        "<xml></xml><xml></xml>",
        "<xml><![CDATA[x",
    ] {
        assert!(parse_xml(bad).is_err(), "{bad:?}");
    }
    let deep = format!("<xml>{}{}</xml>", "<a>".repeat(40), "</a>".repeat(40));
    assert!(parse_xml(&deep).is_err());
    assert_eq!(cdata("a]]>b"), "<![CDATA[a]]]]><![CDATA[>b]]>");
    assert_eq!(
        parse_xml(&format!("<xml><C>{}</C></xml>", cdata("x]]>y")))
            .unwrap()
            .get("C"),
        Some("x]]>y")
    );
}

#[test]
fn encrypt_reply_matches_vector() {
    let v = vectors();
    let p = "/wecom/encrypt_reply";
    let mut secrets = BTreeMap::new();
    for (k, f) in [
        ("token", "token"),
        ("encoding_aes_key", "encoding_aes_key"),
        ("corp_id", "corp_id"),
    ] {
        secrets.insert(k.to_string(), s(&v, &format!("{p}/{f}")).to_string());
    }
    let a = WecomAdapter::new(&secrets, None).unwrap();
    let random: [u8; 16] = s(&v, &format!("{p}/random")).as_bytes().try_into().unwrap();
    let xml = a.encrypt_reply(
        s(&v, &format!("{p}/reply_xml")),
        s(&v, &format!("{p}/timestamp")),
        s(&v, &format!("{p}/nonce")),
        &random,
    );
    let f = parse_xml(&xml).unwrap();
    assert_eq!(f.get("Encrypt"), Some(s(&v, &format!("{p}/encrypt"))));
    assert_eq!(
        f.get("MsgSignature"),
        Some(s(&v, &format!("{p}/msg_signature")))
    );
    assert_eq!(f.get("TimeStamp"), Some(s(&v, &format!("{p}/timestamp"))));
    assert_eq!(f.get("Nonce"), Some(s(&v, &format!("{p}/nonce"))));
    assert_eq!(
            xml,
            format!(
                "<xml><Encrypt><![CDATA[{}]]></Encrypt><MsgSignature><![CDATA[{}]]></MsgSignature><TimeStamp>{}</TimeStamp><Nonce><![CDATA[{}]]></Nonce></xml>",
                s(&v, &format!("{p}/encrypt")),
                s(&v, &format!("{p}/msg_signature")),
                s(&v, &format!("{p}/timestamp")),
                s(&v, &format!("{p}/nonce"))
            )
        );
}

#[test]
fn inline_reply_decrypts_to_text_message() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let msg = PlatformMessage {
        reply_to: serde_json::json!({"user": "ChenJiaShun", "agent_id": "1000002"}),
        ..Default::default()
    };
    let now = SystemTime::now();
    let resp = a.inline_reply(&msg, "hi ]]> there", now).unwrap();
    assert_eq!(resp.content_type, "application/xml");
    let outer = parse_xml(std::str::from_utf8(&resp.body).unwrap()).unwrap();
    let ts = outer.get("TimeStamp").unwrap();
    assert_eq!(ts, unix_secs(now).to_string());
    let plain = a
        .verify_and_decrypt(
            outer.get("MsgSignature").unwrap(),
            ts,
            outer.get("Nonce").unwrap(),
            outer.get("Encrypt").unwrap(),
        )
        .unwrap();
    let inner = parse_xml(std::str::from_utf8(&plain).unwrap()).unwrap();
    assert_eq!(inner.get("ToUserName"), Some("ChenJiaShun"));
    assert_eq!(inner.get("FromUserName"), Some("ww1436e0e65a779aee"));
    assert_eq!(inner.get("MsgType"), Some("text"));
    assert_eq!(inner.get("Content"), Some("hi ]]> there"));
    assert_eq!(a.ack(&msg), WebhookResponse::empty());
    assert!(a
        .inline_reply(&PlatformMessage::default(), "x", now)
        .is_none());
}

#[test]
fn reply_calls_use_message_send_with_cached_token() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let msg = PlatformMessage {
        reply_to: serde_json::json!({"user": "ChenJiaShun", "agent_id": "1000002"}),
        ..Default::default()
    };
    let calls = a.reply_calls(&msg, "hello").unwrap();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.method, Method::POST);
    assert_eq!(c.url, "http://127.0.0.1:9/cgi-bin/message/send");
    assert_eq!(c.success, Some(("/errcode", serde_json::json!(0))));
    assert!(c
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/json")));
    let body: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"touser": "ChenJiaShun", "msgtype": "text", "agentid": 1000002, "text": {"content": "hello"}})
    );
    let auth = c.auth.as_ref().unwrap();
    assert_eq!(auth.fetch.method, Method::GET);
    assert_eq!(
        auth.fetch.url,
        "http://127.0.0.1:9/cgi-bin/gettoken?corpid=ww1436e0e65a779aee&corpsecret=s3cr%26t"
    );
    assert_eq!(auth.token_pointer, "/access_token");
    assert_eq!(auth.expires_in_pointer, "/expires_in");
    assert_eq!(auth.placement, TokenPlacement::QueryParam("access_token"));
    assert!(!auth.cache_key.contains("s3cr"));
    // Without corp_secret there is no API path.
    let mut secrets = BTreeMap::new();
    secrets.insert("token".to_string(), "t".to_string());
    secrets.insert(
        "encoding_aes_key".to_string(),
        "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt".to_string(),
    );
    secrets.insert("corp_id".to_string(), "c".to_string());
    let bare = WecomAdapter::new(&secrets, None).unwrap();
    assert_eq!(
        bare.reply_calls(&msg, "x").unwrap_err(),
        Rejection::Missing("corp_secret")
    );
    assert_eq!(
        a.reply_calls(&PlatformMessage::default(), "x").unwrap_err(),
        Rejection::Missing("reply_to.user")
    );
}

/// The official sample, resealed after it was signed: the masked inner
/// XML is encrypted again under a fresh timestamp and signature, and
/// verifies at the later time.
#[test]
fn official_message_reseals_with_a_fresh_signature() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let h = HeaderMap::new();
    let body = s(&v, "/wecom/official_sample/message/body_xml");
    let ts = s(&v, "/wecom/official_sample/message/timestamp");
    let q = official_message_query(&v);
    let later = at(ts) + Duration::from_secs(7);
    let r_later = req(&Method::POST, &q, &h, body.as_bytes(), later);
    let mut p = a.payload(&r_later).unwrap();
    let mut seen = Vec::new();
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        seen.push(s.clone());
        s.push_str(" ****");
    })
    .unwrap();
    assert_eq!(seen, ["你好"]);
    let sealed = a.reseal_payload(&r_later, &p).unwrap();
    let new_q = sealed.query.clone().unwrap();
    assert!(sealed.headers.is_empty());
    assert!(new_q.contains(&format!("timestamp={}", unix_secs(later))));
    assert!(!new_q.contains(&format!("timestamp={ts}")));
    let r2 = req(&Method::POST, &new_q, &h, &sealed.body, later);
    let Inbound::Message(m2) = a.receive(&r2).unwrap() else {
        panic!()
    };
    assert_eq!(m2.text, "你好 ****");
    assert_eq!(
        (m2.message_id.as_str(), m2.sender_id.as_str()),
        ("1456453720", "ChenJiaShun")
    );
    // The rest of the outer body is preserved.
    let outer = parse_xml(std::str::from_utf8(&sealed.body).unwrap()).unwrap();
    assert_eq!(outer.get("AgentID"), Some("1000002"));
}

#[test]
fn percent_encoding_is_reversible() {
    let s = "a b&c=d/é+";
    assert_eq!(
        super::super::adapter::percent_decode(&percent_encode(s)).unwrap(),
        s
    );
}

fn vectors() -> serde_json::Value {
    super::super::wxcrypt::vectors()
}

#[test]
fn payload_is_the_decrypted_xml_and_reseals() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let h = HeaderMap::new();
    let now = SystemTime::now();
    let ts = unix_secs(now).to_string();
    let inner = "<xml><ToUserName><![CDATA[ww1436e0e65a779aee]]></ToUserName><FromUserName><![CDATA[u4111]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[card 4111 & <b>]]></Content><MsgId>4111</MsgId><AgentID>1000002</AgentID></xml>";
    let (q, b) = signed_post(&a, inner, &ts);
    let r = req(&Method::POST, &q, &h, b.as_bytes(), now);
    let mut p = a.payload(&r).unwrap();
    assert_eq!(p, Payload::Xml(inner.to_string()));
    let mut seen = Vec::new();
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        seen.push(s.clone());
        *s = s.replace("4111", "****");
    })
    .unwrap();
    assert_eq!(seen, ["card 4111 & <b>"]);
    let sealed = a.reseal_payload(&r, &p).unwrap();
    let q2 = sealed.query.clone().unwrap();
    let Inbound::Message(m) = a
        .receive(&req(&Method::POST, &q2, &h, &sealed.body, now))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(m.text, "card **** & <b>");
    assert_eq!(
        (m.sender_id.as_str(), m.message_id.as_str()),
        ("u4111", "4111")
    );
    // The outer envelope keeps its other elements.
    let outer = parse_xml(std::str::from_utf8(&sealed.body).unwrap()).unwrap();
    assert_eq!(outer.get("AgentID"), Some("1000002"));
    // A forged original is not resealed; only XML payloads are.
    let forged = req(
        &Method::POST,
        "msg_signature=00&timestamp=1&nonce=1",
        &h,
        b.as_bytes(),
        now,
    );
    assert!(a.reseal_payload(&forged, &p).is_none());
    assert!(a.reseal_payload(&r, &Payload::Text("x".into())).is_none());
    // A URL check carries nothing to scan.
    assert_eq!(
        a.payload(&req(&Method::GET, &q, &h, b"", now)).unwrap(),
        Payload::Empty
    );
}

#[test]
fn passive_replies_open_and_seal() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let msg = PlatformMessage {
        reply_to: serde_json::json!({"user": "ChenJiaShun", "agent_id": "1000002"}),
        ..Default::default()
    };
    let now = SystemTime::now();
    let answer = a.inline_reply(&msg, "your card 4111", now).unwrap();
    let mut p = a
        .open_answer(Some(answer.content_type), &answer.body)
        .unwrap();
    let Payload::Xml(inner) = &p else {
        panic!("{p:?}")
    };
    assert!(inner.contains("your card 4111"));
    p.texts_mut(a.opaque_keys(), &mut |s: &mut String| {
        *s = s.replace("4111", "****")
    })
    .unwrap();
    let later = now + Duration::from_secs(2);
    let sealed = a.seal_answer(&p, later).unwrap();
    let outer = parse_xml(std::str::from_utf8(&sealed).unwrap()).unwrap();
    assert_eq!(
        outer.get("TimeStamp"),
        Some(unix_secs(later).to_string().as_str())
    );
    let Payload::Xml(reopened) = a.open_answer(Some("application/xml"), &sealed).unwrap() else {
        panic!()
    };
    let f = parse_xml(&reopened).unwrap();
    assert_eq!(f.get("Content"), Some("your card ****"));
    assert_eq!(f.get("ToUserName"), Some("ChenJiaShun"));
    // Empty and plain answers; a forged envelope is refused.
    assert_eq!(a.open_answer(None, b"").unwrap(), Payload::Empty);
    assert_eq!(
        a.open_answer(None, b"success").unwrap(),
        Payload::Text("success".into())
    );
    assert_eq!(
        a.seal_answer(&Payload::Text("success".into()), now)
            .unwrap(),
        &b"success"[..]
    );
    let forged = std::str::from_utf8(&sealed)
        .unwrap()
        .replace(outer.get("MsgSignature").unwrap(), &"0".repeat(40));
    assert_eq!(
        a.open_answer(None, forged.as_bytes()).unwrap_err(),
        Rejection::BadSignature("msg_signature")
    );
}

/// Ciphertexts an attacker could put in `<Encrypt>` or `echostr`: one
/// that decrypts, and each way decryption fails.
fn hostile_ciphertexts(a: &WecomAdapter) -> Vec<(&'static str, String)> {
    // The legacy sample's key: not this route's.
    let other =
        WxCrypt::from_encoding_aes_key("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C").unwrap();
    let inner = "<xml><FromUserName>u</FromUserName><MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>";
    let bad_padding =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0x5a; 32]);
    assert_eq!(
        a.crypt.decrypt(&bad_padding, &a.corp_id),
        Err(wxcrypt::WxCryptError::Padding)
    );
    vec![
        (
            "valid",
            a.crypt.encrypt(inner.as_bytes(), &a.corp_id, &[3; 16]),
        ),
        ("not base64", "!!notbase64!!".into()),
        ("bad length", "AAAA".into()),
        ("bad padding", bad_padding),
        (
            "wrong receive id",
            a.crypt.encrypt(inner.as_bytes(), "wwSOMEONEELSE", &[3; 16]),
        ),
        (
            "other key",
            other.encrypt(inner.as_bytes(), &a.corp_id, &[3; 16]),
        ),
    ]
}

/// A POST or URL check whose `msg_signature` fails, or is stale, is
/// never decrypted: every ciphertext gets the rejection a valid one gets.
#[test]
fn a_failed_signature_is_never_decrypted() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let h = HeaderMap::new();
    let t0 = 1_700_000_000i64;
    let ts = t0.to_string();
    let now = UNIX_EPOCH + Duration::from_secs(t0 as u64);
    for (what, enc) in hostile_ciphertexts(&a) {
        let before = wxcrypt::decrypts();
        let body = format!("<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>");
        let forged = wxcrypt::msg_signature("guessed", &ts, "n", &enc);
        let stale = wxcrypt::msg_signature(&a.token, &ts, "n", &enc);
        for (method, sig, at, want) in [
            (&Method::POST, &forged, now, "bad_signature"),
            (
                &Method::POST,
                &stale,
                now + Duration::from_secs(301),
                "stale_timestamp",
            ),
            (&Method::GET, &forged, now, "bad_signature"),
            (
                &Method::GET,
                &stale,
                now + Duration::from_secs(301),
                "stale_timestamp",
            ),
        ] {
            let mut q = format!("msg_signature={sig}&timestamp={ts}&nonce=n");
            let body = if method == Method::GET {
                q.push_str(&format!("&echostr={}", enc_q(&enc)));
                ""
            } else {
                body.as_str()
            };
            let r = a
                .receive(&req(method, &q, &h, body.as_bytes(), at))
                .unwrap_err();
            assert_eq!(r.kind(), want, "{what} {method}");
            if want == "bad_signature" {
                assert_eq!(r, Rejection::BadSignature("msg_signature"), "{what}");
            }
            if method == Method::POST {
                assert!(a
                    .payload(&req(method, &q, &h, body.as_bytes(), at))
                    .is_err());
            }
        }
        assert_eq!(
            wxcrypt::decrypts(),
            before,
            "{what}: decrypted before verifying"
        );
    }
}

/// Every failure to authenticate, and every failure to decrypt a signed
/// body, answers alike; the precise reason stays in `kind`. A signed
/// plaintext that is not XML is the client's to know (400).
#[test]
fn every_unauthenticated_failure_answers_alike() {
    let v = vectors();
    let a = adapter(&v, "official_sample");
    let h = HeaderMap::new();
    let now = SystemTime::now();
    let ts = unix_secs(now).to_string();
    let signed_over = |enc: &str| {
        let sig = wxcrypt::msg_signature(&a.token, &ts, "n", enc);
        format!("msg_signature={sig}&timestamp={ts}&nonce=n")
    };
    let mut failures = Vec::new();
    for (what, enc) in hostile_ciphertexts(&a).into_iter().skip(1) {
        let body = format!("<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>");
        let r = a.receive(&req(
            &Method::POST,
            &signed_over(&enc),
            &h,
            body.as_bytes(),
            now,
        ));
        failures.push((what.to_string(), r.unwrap_err()));
    }
    let (good_q, good_b) = signed_post(&a, "<xml><MsgType>text</MsgType></xml>", &ts);
    let old = signed_post(&a, "<xml><MsgType>text</MsgType></xml>", "1700000000");
    for (what, q, body) in [
        (
            "no signature",
            format!("timestamp={ts}&nonce=n"),
            good_b.clone(),
        ),
        ("no nonce", good_q.replace("&nonce=42", ""), good_b.clone()),
        (
            "forged",
            good_q.replace("nonce=42", "nonce=43"),
            good_b.clone(),
        ),
        ("stale", old.0, old.1),
        ("not UTF-8", good_q.clone(), "\u{fffd}".into()),
        ("broken XML", signed_over("x"), "<xml><Encrypt>x".into()),
        (
            "DOCTYPE",
            signed_over("x"),
            "<!DOCTYPE xml><xml><Encrypt>x</Encrypt></xml>".into(),
        ),
        (
            "no Encrypt",
            signed_over(""),
            "<xml><ToUserName>x</ToUserName></xml>".into(),
        ),
    ] {
        let mut bytes = body.into_bytes();
        if what == "not UTF-8" {
            bytes = b"\xff\xfe<xml/>".to_vec();
        }
        let r = a.receive(&req(&Method::POST, &q, &h, &bytes, now));
        failures.push((what.to_string(), r.unwrap_err()));
    }
    let r = a.receive(&req(&Method::GET, &good_q, &h, b"", now));
    failures.push(("no echostr".into(), r.unwrap_err()));
    let mut kinds = std::collections::BTreeSet::new();
    for (what, r) in &failures {
        assert!(r.is_unauthenticated(), "{what}: {r:?}");
        assert_eq!(r.status(), http::StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            (r.public_kind(), r.public_message().as_str()),
            ("unauthenticated", "the request could not be authenticated"),
            "{what}"
        );
        kinds.insert(r.kind());
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "bad_signature",
            "decrypt_failed",
            "malformed",
            "missing_field",
            "stale_timestamp"
        ]
    );
    let (q, b) = signed_post(&a, "this is not xml <", &ts);
    let r = a
        .receive(&req(&Method::POST, &q, &h, b.as_bytes(), now))
        .unwrap_err();
    assert_eq!(
        (r.status(), r.public_kind()),
        (http::StatusCode::BAD_REQUEST, "malformed")
    );
}
