//! Every scheme of the menu, template escaping, load errors, and loading
//! with the policy set.

use super::*;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};

const FIELDS: &str = "fields:\n  id: /id\n  text: /text\n  sender: /user\n  room: /room\n";

fn with_verify(verify: &str) -> CompiledAdapter {
    compile(&format!("name: acme\nverify:\n{verify}{FIELDS}")).unwrap_or_else(|e| panic!("{e}"))
}

const BODY: &str = r#"{"id":"m1","text":"hi","user":"u1","room":"r1"}"#;

fn hmac_sha1(key: &str, msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn hmac_sha256(key: &str, msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn kind(a: &CompiledAdapter, h: &HeaderMap, body: &str, now: u64) -> &'static str {
    match receive(a.adapter.as_ref(), h, body.as_bytes(), now) {
        Ok(Inbound::Message(_)) => "ok",
        Ok(other) => panic!("{other:?}"),
        Err(e) => e.kind(),
    }
}

#[test]
fn hmac_sha1_base64_and_sha256_hex() {
    let a = with_verify("  scheme: hmac\n  algorithm: sha1\n  secret: k\n  header: X-Sig\n  encoding: base64\n  prefix: \"sha1=\"\n");
    let sig = base64::engine::general_purpose::STANDARD.encode(hmac_sha1("k", BODY.as_bytes()));
    assert_eq!(
        kind(&a, &headers(&[("x-sig", &format!("sha1={sig}"))]), BODY, 0),
        "ok"
    );
    assert_eq!(
        kind(&a, &headers(&[("x-sig", &sig)]), BODY, 0),
        "bad_signature"
    );
    assert_eq!(
        kind(
            &a,
            &headers(&[("x-sig", &format!("sha1={sig}"))]),
            &BODY.replace("hi", "ho"),
            0
        ),
        "bad_signature"
    );
    assert_eq!(kind(&a, &HeaderMap::new(), BODY, 0), "missing_field");

    let a = with_verify("  scheme: hmac\n  secret: k\n  header: X-Sig\n  message: \"{header.X-Ts}.{body}\"\n  timestamp: { header: X-Ts, window: 1m, unit: milliseconds }\n");
    let ts = "1700000000123";
    let sig = hex::encode(hmac_sha256("k", format!("{ts}.{BODY}").as_bytes()));
    let h = headers(&[("x-sig", &sig.to_uppercase()), ("x-ts", ts)]);
    assert_eq!(kind(&a, &h, BODY, 1_700_000_030), "ok");
    assert_eq!(kind(&a, &h, BODY, 1_700_000_061), "stale_timestamp");
    // A signature of another message (without the timestamp) is refused.
    let h = headers(&[
        ("x-sig", &hex::encode(hmac_sha256("k", BODY.as_bytes()))),
        ("x-ts", ts),
    ]);
    assert_eq!(kind(&a, &h, BODY, 1_700_000_000), "bad_signature");
}

#[test]
fn token_ed25519_jwt_and_none() {
    let a = with_verify("  scheme: token\n  header: X-Token\n  secret: s3kr1t\n");
    assert_eq!(kind(&a, &headers(&[("x-token", "s3kr1t")]), BODY, 0), "ok");
    assert_eq!(
        kind(&a, &headers(&[("x-token", "s3kr1t2")]), BODY, 0),
        "bad_signature"
    );
    assert_eq!(kind(&a, &HeaderMap::new(), BODY, 0), "missing_field");
    assert!(!format!("{:?}", a.adapter).contains("s3kr1t"));

    let key = SigningKey::from_bytes(&[7; 32]);
    let public = hex::encode(key.verifying_key().to_bytes());
    let a = with_verify(&format!("  scheme: ed25519\n  public_key: {public}\n  header: X-Signature-Ed25519\n  message: \"{{header.X-Signature-Timestamp}}{{body}}\"\n"));
    let sig = hex::encode(key.sign(format!("123{BODY}").as_bytes()).to_bytes());
    let h = headers(&[
        ("x-signature-ed25519", &sig),
        ("x-signature-timestamp", "123"),
    ]);
    assert_eq!(kind(&a, &h, BODY, 0), "ok");
    let h = headers(&[
        ("x-signature-ed25519", &sig),
        ("x-signature-timestamp", "124"),
    ]);
    assert_eq!(kind(&a, &h, BODY, 0), "bad_signature");
    let h = headers(&[
        ("x-signature-ed25519", "zz"),
        ("x-signature-timestamp", "123"),
    ]);
    assert_eq!(kind(&a, &h, BODY, 0), "bad_signature");

    struct Fake;
    impl BearerVerifier for Fake {
        fn verify(&self, authorization: Option<&str>) -> Result<Principal, Rejection> {
            match authorization {
                Some("Bearer good") => Ok(Principal {
                    id: "alice".into(),
                    tenant: "acme".into(),
                    ..Principal::default()
                }),
                _ => Err(Rejection::Unauthorized {
                    kind: "invalid_token",
                    message: "no".into(),
                    challenge: "Bearer".into(),
                }),
            }
        }
    }
    let a = compile("name: acme\nverify: { scheme: jwt }\nfields:\n  id: /id\n  text: /text\n")
        .unwrap();
    let req = |auth: &str| {
        let h = headers(&[("authorization", auth)]);
        a.adapter.receive(&WebhookRequest {
            method: &Method::POST,
            query: None,
            headers: &h,
            body: BODY.as_bytes(),
            now: at(0),
            bearer: Some(&Fake),
        })
    };
    let m = message(req("Bearer good"));
    assert_eq!((m.sender_id.as_str(), m.tenant.as_str()), ("alice", "acme"));
    assert_eq!(m.principal.unwrap().id, "alice");
    assert!(matches!(
        req("Bearer bad").unwrap_err(),
        Rejection::Unauthorized { .. }
    ));

    // none: an MQTT payload, no HTTP at all.
    let a = with_verify("  scheme: none\n");
    let m = message(a.adapter.receive_payload(BODY.as_bytes(), at(0)));
    assert_eq!(
        (
            m.message_id.as_str(),
            m.text.as_str(),
            m.sender_id.as_str(),
            m.room_id.as_str()
        ),
        ("m1", "hi", "u1", "r1")
    );
    // A route with scheme none needs an allow list.
    let err = compile(&format!("name: acme\nroute: {{ path: /hooks/acme, upstream: ai }}\nverify:\n  scheme: none\n{FIELDS}")).unwrap_err();
    assert!(
        err.to_string()
            .contains("acme.yaml:4:11: scheme none needs `route.ip_allow`"),
        "{err}"
    );
    let ok = compile(&format!("name: acme\nroute: {{ path: /hooks/acme, upstream: ai, ip_allow: [10.0.0.0/8, 127.0.0.1] }}\nverify:\n  scheme: none\n{FIELDS}")).unwrap();
    assert_eq!(ok.route.unwrap().ip_allow.len(), 2);
}

fn reply_adapter(reply: &str) -> CompiledAdapter {
    compile(&format!("name: acme\nroute: {{ path: /h, upstream: ai, api_base: 'http://127.0.0.1:9' }}\nverify: {{ scheme: token, header: X-T, secret: s }}\n{FIELDS}reply:\n{reply}")).unwrap_or_else(|e| panic!("{e}"))
}

fn msg(a: &CompiledAdapter, body: &str) -> PlatformMessage {
    message(receive(
        a.adapter.as_ref(),
        &headers(&[("x-t", "s")]),
        body.as_bytes(),
        0,
    ))
}

#[test]
fn templates_cannot_be_broken_out_of() {
    let a = reply_adapter("  inline: { body: { text: \"re: {{reply}}\", room: \"{{room}}\" } }\n  api:\n    base: https://api.example.com\n    url: \"/send/{{room}}?q={{reply}}\"\n    headers: { X-Reply: \"r {{reply}}\" }\n    format: form\n    body: { to: \"{{sender}}\", text: \"{{reply}}\" }\n");
    let m = msg(
        &a,
        r#"{"id":"1","text":"hi","user":"u&x=1","room":"a/../b"}"#,
    );
    let evil = "\"}, \"x\": 1, \"y\": {\"";
    let inline = a.adapter.inline_reply(&m, evil, at(0)).unwrap();
    let v = json_of(&inline.body);
    assert_eq!(v, json!({"text": format!("re: {evil}"), "room": "a/../b"}));
    // Header injection is refused; a clean reply goes out encoded.
    let err = a.adapter.reply_calls(&m, "ok\r\nX-Evil: 1").unwrap_err();
    assert_eq!(err.kind(), "malformed");
    let calls = a.adapter.reply_calls(&m, "a b&c").unwrap();
    assert_eq!(
        calls[0].url,
        "http://127.0.0.1:9/send/a%2F..%2Fb?q=a%20b%26c"
    );
    assert_eq!(&calls[0].body[..], b"text=a%20b%26c&to=u%26x%3D1");
    assert!(calls[0]
        .headers
        .contains(&("x-reply".into(), "r a b&c".into())));
    assert!(calls[0].headers.contains(&(
        "content-type".into(),
        "application/x-www-form-urlencoded".into()
    )));

    let a = reply_adapter("  inline: { format: xml, body: { xml: { Content: \"{{reply}}\", To: \"{{sender}}\" } } }\n");
    let m = msg(&a, r#"{"id":"1","text":"hi","user":"u1","room":"r"}"#);
    let r = a
        .adapter
        .inline_reply(&m, "</Content><Evil/>&", at(0))
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        "<xml><Content>&lt;/Content&gt;&lt;Evil/&gt;&amp;</Content><To>u1</To></xml>"
    );
    assert_eq!(r.content_type, "application/xml");
}

#[test]
fn xml_and_form_documents_and_attachments() {
    let a = compile("name: acme\nformat: xml\nverify: { scheme: none }\nfields:\n  id: /xml/MsgId\n  text: /xml/Content\n  sender: /xml/From/@id\n").unwrap();
    let body = "<xml><MsgId>7</MsgId><Content><![CDATA[a &amp; b]]> &amp; c</Content><From id=\"u9\"/></xml>";
    let m = message(a.adapter.receive_payload(body.as_bytes(), at(0)));
    assert_eq!(
        (m.message_id.as_str(), m.text.as_str(), m.sender_id.as_str()),
        ("7", "a &amp; b & c", "u9")
    );
    let doctype = "<!DOCTYPE x [<!ENTITY e 'boom'>]><xml><MsgId>&e;</MsgId></xml>";
    assert_eq!(
        a.adapter
            .receive_payload(doctype.as_bytes(), at(0))
            .unwrap_err()
            .kind(),
        "malformed"
    );

    let a = compile("name: acme\nformat: json\nverify: { scheme: none }\nfields:\n  id: /id\n  text: /text\n  attachments: { field: /files, name: /name, url: /url }\n").unwrap();
    let files: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("f{i}"), "url": format!("https://x/{i}")}))
        .collect();
    let body = json!({"id": 1, "text": "t", "files": files}).to_string();
    let m = message(a.adapter.receive_payload(body.as_bytes(), at(0)));
    assert_eq!(m.attributes.len(), MAX_ATTACHMENTS);
    assert_eq!(m.attributes["attachment.3"], "f3|https://x/3");
    // Never a panic, whatever the bytes.
    let mut x: u32 = 7;
    for len in 0..300 {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        let _ = a.adapter.receive_payload(&junk, at(0));
    }
}

#[test]
fn load_errors_are_located_with_did_you_mean() {
    let cases = [
        ("name: acme\nverfy: { scheme: none }\n", "acme.yaml:2:1: unknown key 'verfy' (did you mean 'verify'?)"),
        (&*format!("name: acme\nverify: {{ scheme: none }}\n{FIELDS}reply:\n  inline: {{ body: {{ to: \"{{{{sendr}}}}\" }} }}\n"), "acme.yaml:9:28: unknown placeholder 'sendr' (did you mean 'sender'?)"),
        (&*format!("name: slack\nverify: {{ scheme: none }}\n{FIELDS}"), "acme.yaml:1:1: 'slack' is a built-in platform"),
        (&*format!("name: acme\nverify: {{ scheme: hmac, header: X-S }}\n{FIELDS}"), "acme.yaml:2:11: this scheme needs `secret`"),
        (&*format!("name: acme\nverify: {{ scheme: token, header: X, secret: s, encoding: hex }}\n{FIELDS}"), "`encoding` does not apply to this scheme"),
        (&*format!("name: acme\nverify: {{ scheme: hmac, header: X, secret: s, message: '{{bdy}}' }}\n{FIELDS}"), "unknown message part '{bdy}' (did you mean '{body}'?)"),
        ("name: acme\nverify: { scheme: none }\nfields:\n  id: event_id\n  text: /t\n", "acme.yaml:4:7: 'event_id' is not a JSON pointer"),
        ("name: acme\nverify: { scheme: none }\nfields:\n  id: /i\n  text: /t\n  chat_type: { field: /c, map: { im: privat } }\n", "chat type 'privat' must be private, group or channel"),
        ("name: acme\nverify: { scheme: none }\nignore:\n  - { field: /t, equals: a, present: true }\nfields:\n  id: /i\n  text: /t\n", "exactly one of equals"),
        ("name: acme\nverify: { scheme: none }\nfields:\n  id: /i\n  text: { fild: /t }\n", "unknown key 'fild' (did you mean 'field'?)"),
    ];
    for (text, want) in cases {
        let err = compile(text).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(want), "want {want:?}\ngot  {err}");
        assert!(err.starts_with("policies/adapters/acme.yaml:"), "{err}");
    }
    let err = compile("name: acme\nverify: { scheme: hmac, header: X, secret: topsecret, prefix: 1 }\nfields: { id: /i, text: t }\n").unwrap_err();
    assert!(!err.to_string().contains("topsecret"));
}

#[test]
fn the_policy_set_loads_adapters_and_refuses_clashes() {
    let dir = tempfile::tempdir().unwrap();
    let set = crate::policy::PolicySet::load(dir.path(), 1, None).unwrap();
    assert!(set.adapters.is_empty());
    let adapters = dir.path().join(DIR);
    std::fs::create_dir(&adapters).unwrap();
    let file = |name: &str, path: &str| {
        format!("name: {name}\nroute: {{ path: {path}, upstream: ai }}\nverify: {{ scheme: token, header: X-T, secret: s }}\n{FIELDS}")
    };
    std::fs::write(adapters.join("a.yaml"), file("one", "/hooks/one")).unwrap();
    std::fs::write(adapters.join("b.yml"), file("two", "/hooks/two")).unwrap();
    std::fs::write(adapters.join("notes.txt"), "not an adapter").unwrap();
    let set = crate::policy::PolicySet::load(dir.path(), 1, None).unwrap();
    assert_eq!(set.adapters.len(), 2);
    let one = set.adapters.by_path("/hooks/one").unwrap();
    assert_eq!((one.name, one.adapter.platform()), ("one", "one"));
    assert!(set.adapters.by_name("two").is_some());
    assert_eq!(set.adapters.iter().count(), 2);

    std::fs::write(adapters.join("c.yaml"), file("three", "/hooks/one")).unwrap();
    let err = crate::policy::PolicySet::load(dir.path(), 2, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c.yaml:2:10: route path '/hooks/one' is already taken by")
            && err.contains("a.yaml"),
        "{err}"
    );
    std::fs::write(adapters.join("c.yaml"), file("one", "/hooks/three")).unwrap();
    let err = crate::policy::PolicySet::load(dir.path(), 2, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c.yaml:1:1: adapter name 'one' is already taken by")
            && err.contains("a.yaml"),
        "{err}"
    );
    std::fs::write(adapters.join("c.yaml"), "name: acme\nverfy: {}\n").unwrap();
    let err = crate::policy::PolicySet::load(dir.path(), 2, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapters/c.yaml:2:1: unknown key 'verfy' (did you mean 'verify'?)"),
        "{err}"
    );
}

#[test]
fn the_interner_leaks_each_name_once() {
    let a = intern("acme_interned").unwrap();
    let b = intern(&String::from("acme_interned")).unwrap();
    assert!(std::ptr::eq(a, b));
}
