//! Declarative adapters: an adapter file compiled from text, then used.
//!
//! Input: the whole file text (lossy UTF-8), compiled by
//! `CompiledAdapter::from_yaml` exactly as `AdapterSet::load_dir` does for
//! each file in `<policies>/adapters/`.
//!
//! Properties: nothing panics; every error names the file and any line it
//! gives is inside the text; a file that compiles has a name that is not a
//! built-in platform, a route whose `verify.scheme: none` has an allow
//! list; and it handles a few bodies (JSON, form, XML, junk) without a
//! panic, with every reply it renders well-formed: an inline JSON body
//! parses, API headers carry no control characters whatever the reply.

use std::path::Path;

use super::common::*;
use moltgate::adapters::{is_reserved, CompiledAdapter};
use moltgate::platform::adapter::{Inbound, PlatformAdapter, WebhookRequest};

const BODIES: &[&[u8]] = &[
    br#"{"id":"m1","text":"hi","user":"u1","room":1,"type":"event_callback","event":{"type":"message","text":"hey","user":"U1","channel":"C1","ts":"1.2"},"event_id":"Ev1","update_id":7,"message":{"text":"/start","chat":{"id":5,"type":"group"},"from":{"id":3}}}"#,
    b"id=m1&text=hi%20there&user=u1&room=r1",
    b"<xml><MsgId>7</MsgId><Content><![CDATA[hi]]></Content><From id=\"u\"/></xml>",
    b"",
    b"\xff\x00{",
];

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("policies/adapters/fuzz.yaml");
    let compiled = match CompiledAdapter::from_yaml(path, &text) {
        Ok(c) => c,
        Err(e) => {
            for one in e.clone().split() {
                assert_eq!(one.path, path, "an error names another file: {one}");
            }
            // Located inside the file as YAML counts lines (a lone CR is a
            // line break too), with a message.
            super::common::check_file_error(&e, &text);
            return;
        }
    };
    assert!(!is_reserved(compiled.name));
    assert_eq!(compiled.adapter.platform(), compiled.name);
    if let Some(route) = &compiled.route {
        assert!(route.path.starts_with('/'));
        if compiled.adapter.scheme() == "none" {
            assert!(
                !route.ip_allow.is_empty(),
                "scheme none served without an allow list"
            );
        }
    }
    let a = compiled.adapter.as_ref();
    for body in BODIES {
        let h = headers(&[]);
        let req = WebhookRequest {
            method: method(false),
            query: Some("a=1&sig=x"),
            headers: &h,
            body,
            now: at_secs(1_700_000_000),
            bearer: None,
        };
        let inbound = a.receive(&req);
        if let Ok(Inbound::Message(m)) = inbound {
            for reply in ["", "plain", NASTY_REPLY] {
                if let Some(r) = a.inline_reply(&m, reply, at_secs(0)) {
                    if r.content_type == "application/json" {
                        serde_json::from_slice::<serde_json::Value>(&r.body)
                            .expect("an inline JSON reply parses");
                    }
                }
                let _ = a.ack(&m);
                if let Ok(calls) = a.reply_calls(&m, reply) {
                    for c in calls {
                        for (k, v) in &c.headers {
                            assert!(
                                !v.chars().any(char::is_control),
                                "header {k} has a control character"
                            );
                        }
                    }
                }
            }
        }
        let _ = a.payload(&req);
        let _ = a.receive_payload(body, at_secs(0));
    }
}

/// A reply that tries every escape: JSON, form, XML, header, URL.
const NASTY_REPLY: &str = "\"}, \"x\": 1 &a=b <x>]]></x> \r\nX-Evil: 1 /../?#%00 {{reply}}";
