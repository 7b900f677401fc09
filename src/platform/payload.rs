//! A request's or answer's content in the form a bot reads it, so that
//! passthrough can scan every string a person or a bot could read, and
//! rebuild the body from the masked values.
//!
//! Adapters open (decrypt) and seal (re-sign, re-encrypt); this module only
//! parses, walks and serialises. The walk visits every text value except
//! those under opaque keys (ids, signatures, tokens), so a field the parser
//! never looked at (a Telegram `caption`, a Slack `blocks` element) is still
//! scanned before it is forwarded.

use bytes::Bytes;
use serde_json::Value;

use super::rejection::Rejection;

/// Keys that hold ids, signatures, tokens, timestamps or enum-like types on
/// every platform: they carry nothing a person wrote, and rewriting them
/// would break the bot. The default of
/// [`super::adapter::PlatformAdapter::opaque_keys`]; every adapter narrows
/// or extends it for its own payloads.
///
/// `channel` is deliberately absent: on Slack it is an id, but on Discord
/// it is an object with a person-written `name` and `topic`.
pub const COMMON_OPAQUE_KEYS: &[&str] = &[
    "id",
    "type",
    "token",
    "signature",
    "timestamp",
    "ts",
    "event_ts",
    "thread_ts",
    "event_id",
    "update_id",
    "message_id",
    "chat_id",
    "user_id",
    "team_id",
    "api_app_id",
    "app_id",
    "channel_id",
    "guild_id",
    "application_id",
    "open_id",
    "union_id",
    "tenant_key",
    "create_time",
    "msg_type",
    "message_type",
    "chat_type",
];

/// Decoded content.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// No body.
    Empty,
    /// A JSON document.
    Json(Value),
    /// An XML document (WeCom, after decryption).
    Xml(String),
    /// `application/x-www-form-urlencoded` pairs, in order.
    Form(Vec<(String, String)>),
    /// Anything else that is UTF-8, scanned as one text.
    Text(String),
}

impl Payload {
    /// A body that must be a JSON document.
    pub fn json(body: &[u8]) -> Result<Self, Rejection> {
        serde_json::from_slice(body)
            .map(Payload::Json)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))
    }

    /// Parses `body` by its content type (JSON is also recognised by shape).
    /// Bytes that are not UTF-8 are refused: they cannot be scanned.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, Rejection> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Payload::Empty);
        }
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let text = std::str::from_utf8(body)
            .map_err(|_| Rejection::Malformed("body is not UTF-8".into()))?;
        if ct.contains("x-www-form-urlencoded") {
            return Ok(Payload::Form(parse_form(text)?));
        }
        if ct.contains("json") || ct.is_empty() || ct.contains("text/plain") {
            if let Ok(v) = serde_json::from_str::<Value>(text) {
                return Ok(Payload::Json(v));
            }
            if ct.contains("json") {
                return Err(Rejection::Malformed("body is not valid JSON".into()));
            }
        }
        if ct.contains("xml") {
            return Ok(Payload::Xml(text.to_string()));
        }
        Ok(Payload::Text(text.to_string()))
    }

    /// The serialised bytes.
    pub fn to_bytes(&self) -> Result<Bytes, Rejection> {
        Ok(match self {
            Payload::Empty => Bytes::new(),
            Payload::Json(v) => {
                Bytes::from(serde_json::to_vec(v).map_err(|e| Rejection::Malformed(e.to_string()))?)
            }
            Payload::Xml(s) | Payload::Text(s) => Bytes::from(s.clone()),
            Payload::Form(pairs) => Bytes::from(encode_form(pairs)),
        })
    }

    /// Calls `f` on every text value not under a key in `opaque`, letting it
    /// rewrite the value in place: every JSON string (object keys are not
    /// values and are kept), every form value, the whole of a text body, and
    /// every XML text node, CDATA section and attribute value (see
    /// [`super::xml::rewrite_texts`]; an XML document with a DOCTYPE or
    /// entities is refused, so it can never pass unscanned).
    pub fn texts_mut(
        &mut self,
        opaque: &[&str],
        f: &mut dyn FnMut(&mut String),
    ) -> Result<(), Rejection> {
        match self {
            Payload::Empty => {}
            Payload::Json(v) => walk_json(v, opaque, f),
            Payload::Text(s) => f(s),
            Payload::Form(pairs) => {
                for (k, v) in pairs.iter_mut() {
                    if !opaque.contains(&k.as_str()) {
                        f(v);
                    }
                }
            }
            Payload::Xml(xml) => *xml = super::xml::rewrite_texts(xml, opaque, f)?,
        }
        Ok(())
    }
}

fn walk_json(v: &mut Value, opaque: &[&str], f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|i| walk_json(i, opaque, f)),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if !opaque.contains(&k.as_str()) {
                    walk_json(v, opaque, f);
                }
            }
        }
        _ => {}
    }
}

/// Decodes `%XX` escapes and `+`; `None` if the result is not UTF-8 or an escape is broken.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn parse_form(text: &str) -> Result<Vec<(String, String)>, Rejection> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match (percent_decode(k), percent_decode(v)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(Rejection::Malformed("bad form encoding".into())),
            }
        })
        .collect()
}

fn encode_form(pairs: &[(String, String)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mark(p: &mut Payload, opaque: &[&str]) -> Vec<String> {
        let mut seen = Vec::new();
        p.texts_mut(opaque, &mut |s: &mut String| {
            seen.push(s.clone());
            *s = format!("<{s}>");
        })
        .unwrap();
        seen
    }

    #[test]
    fn parse_by_content_type_and_shape() {
        assert_eq!(Payload::parse(None, b" \n").unwrap(), Payload::Empty);
        assert_eq!(
            Payload::parse(None, b"{\"a\":1}").unwrap(),
            Payload::Json(json!({"a":1}))
        );
        assert_eq!(
            Payload::parse(Some("application/x-www-form-urlencoded"), b"a=1&b=x+y%26").unwrap(),
            Payload::Form(vec![("a".into(), "1".into()), ("b".into(), "x y&".into())])
        );
        assert_eq!(
            Payload::parse(Some("application/xml"), b"<xml/>").unwrap(),
            Payload::Xml("<xml/>".into())
        );
        assert_eq!(
            Payload::parse(Some("text/plain"), b"hi").unwrap(),
            Payload::Text("hi".into())
        );
        assert!(Payload::parse(Some("application/json"), b"{").is_err());
        assert!(Payload::parse(None, b"\xff").is_err());
        assert!(Payload::parse(Some("application/x-www-form-urlencoded"), b"a=%zz").is_err());
    }

    #[test]
    fn json_walk_reaches_nested_values_and_skips_opaque_keys() {
        let mut p = Payload::Json(json!({
            "id": "1", "text": "a",
            "nested": {"list": ["b", {"caption": "c", "user_id": "u"}, 7, null, true]},
            "entities": [{"type": "url", "url": "d", "offset": 0}],
            "user_id": {"inner": "skipped whole"}
        }));
        let mut seen = mark(&mut p, &["id", "type", "user_id"]);
        seen.sort();
        assert_eq!(seen, ["a", "b", "c", "d"]);
        assert_eq!(
            p,
            Payload::Json(json!({
                "id": "1", "text": "<a>",
                "nested": {"list": ["<b>", {"caption": "<c>", "user_id": "u"}, 7, null, true]},
                "entities": [{"type": "url", "url": "<d>", "offset": 0}],
                "user_id": {"inner": "skipped whole"}
            }))
        );
        let bytes = p.to_bytes().unwrap();
        assert_eq!(Payload::parse(None, &bytes).unwrap(), p);
    }

    #[test]
    fn form_round_trip() {
        let body = b"token=t0k&text=card+4111+1111%26more&command=%2Fpay&user_id=U1";
        let mut p = Payload::parse(Some("application/x-www-form-urlencoded"), body).unwrap();
        assert_eq!(
            p.to_bytes().unwrap(),
            &b"token=t0k&text=card+4111+1111%26more&command=%2Fpay&user_id=U1"[..]
        );
        let seen = mark(&mut p, &["token", "user_id"]);
        assert_eq!(seen, ["card 4111 1111&more", "/pay"]);
        let again = Payload::parse(
            Some("application/x-www-form-urlencoded"),
            &p.to_bytes().unwrap(),
        )
        .unwrap();
        assert_eq!(again, p);
        let Payload::Form(pairs) = again else {
            panic!()
        };
        assert_eq!(pairs[1], ("text".into(), "<card 4111 1111&more>".into()));
        assert_eq!(pairs[0], ("token".into(), "t0k".into()));
    }

    #[test]
    fn xml_round_trip_with_cdata_and_escaping() {
        let xml = "<xml><ToUserName><![CDATA[corp]]></ToUserName><Content><![CDATA[a ]]]]><![CDATA[> b]]></Content><Title>x &amp; y</Title><MsgId>1</MsgId></xml>";
        let mut p = Payload::Xml(xml.into());
        let seen = mark(&mut p, &["ToUserName", "MsgId"]);
        assert_eq!(seen, ["a ]]> b", "x & y"]);
        let Payload::Xml(out) = &p else { panic!() };
        let f = crate::platform::xml::parse_xml(out).unwrap();
        assert_eq!(f.get("Content"), Some("<a ]]> b>"));
        assert_eq!(f.get("Title"), Some("<x & y>"));
        assert_eq!(f.get("ToUserName"), Some("corp"));
        assert_eq!(f.get("MsgId"), Some("1"));
        assert_eq!(p.to_bytes().unwrap(), out.as_bytes());
        // Entities are refused, not passed unscanned.
        let mut bad = Payload::Xml("<!DOCTYPE x [<!ENTITY e \"e\">]><xml>&e;</xml>".into());
        assert!(bad.texts_mut(&[], &mut |_| {}).is_err());
    }

    #[test]
    fn text_and_empty() {
        let mut p = Payload::Text("plain".into());
        assert_eq!(mark(&mut p, &[]), ["plain"]);
        assert_eq!(p, Payload::Text("<plain>".into()));
        let mut e = Payload::Empty;
        assert!(mark(&mut e, &[]).is_empty());
        assert!(e.to_bytes().unwrap().is_empty());
    }
}
