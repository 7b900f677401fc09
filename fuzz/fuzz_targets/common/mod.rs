//! Shared harness helpers.
//!
//! Input layout of the `*_receive` targets (and the two decrypt targets):
//!
//! ```text
//! ctl: u8 | field_0 NUL field_1 NUL ... field_{n-1} NUL | body (any bytes, NULs included)
//! ```
//!
//! `ctl` selects the harness mode (raw fields vs. harness-computed valid
//! signature / ciphertext around fuzzed content), the HTTP method and, where a
//! platform has several published vectors, the adapter config and the fixed
//! clock. A field that is missing (fewer NULs than fields) is an absent header
//! or parameter; the remainder is the body. `fuzz/seed.py` writes seeds in
//! this layout.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use moltgate::platform::adapter::{Inbound, PlatformAdapter, Resealed, WebhookRequest};

pub struct Input<'a> {
    pub ctl: u8,
    pub fields: Vec<Option<&'a [u8]>>,
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn split(data: &'a [u8], n: usize) -> Option<Self> {
        let (&ctl, mut rest) = data.split_first()?;
        let mut fields = Vec::with_capacity(n);
        while fields.len() < n {
            match rest.iter().position(|&b| b == 0) {
                Some(i) => {
                    fields.push(Some(&rest[..i]));
                    rest = &rest[i + 1..];
                }
                None => break,
            }
        }
        fields.resize(n, None);
        Some(Self {
            ctl,
            fields,
            body: rest,
        })
    }

    pub fn field(&self, i: usize) -> Option<&'a [u8]> {
        self.fields.get(i).copied().flatten()
    }

    /// The field as text (lossy), empty when absent.
    pub fn text(&self, i: usize) -> Cow<'a, str> {
        String::from_utf8_lossy(self.field(i).unwrap_or_default())
    }

    pub fn bit(&self, b: u8) -> bool {
        self.ctl & (1 << b) != 0
    }
}

pub fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn at_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub fn at_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Builds a header map; values that `http` would refuse are left out (as a
/// real server would never hand them to the adapter).
pub fn headers(pairs: &[(&'static str, Option<&[u8]>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        if let Some(v) = value {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(HeaderName::from_static(*name), v);
            }
        }
    }
    h
}

/// `POST` normally; `GET` when asked (adapters must refuse, or route to their GET handling).
pub fn method(get: bool) -> &'static Method {
    static GET: Method = Method::GET;
    static POST: Method = Method::POST;
    if get {
        &GET
    } else {
        &POST
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Text fed to the reply/reseal half of the contract: nasty on purpose (CDATA
/// terminator, Slack markup, entities, astral chars, long enough to split).
pub fn tricky_text() -> &'static str {
    static T: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let mut s = String::from("]]><![CDATA[ <@U1|x> &amp; &lt; @_user_1 \u{0} \r\n");
        while s.encode_utf16().count() < 4200 {
            s.push_str("\u{1F600}é中");
        }
        s
    });
    T.as_str()
}

static DEBUG: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("FUZZ_DEBUG").is_some());

/// Runs `receive` and, for a message, the rest of the adapter contract on it.
/// Everything must hold without panicking, whatever the bytes.
pub fn drive<A: PlatformAdapter>(adapter: &A, req: &WebhookRequest<'_>) -> Option<Inbound> {
    let result = adapter.receive(req);
    if *DEBUG {
        // `FUZZ_DEBUG=1 target seeds/<target>/*` shows what each seed reaches.
        match &result {
            Ok(Inbound::Message(m)) => eprintln!("=> message {:?} {:?}", m.message_id, m.text),
            Ok(Inbound::Answer { event, .. }) => eprintln!("=> answer {event}"),
            Ok(Inbound::Skip { reason, .. }) => eprintln!("=> skip {reason}"),
            Err(e) => eprintln!("=> rejected: {e}"),
        }
    }
    match result {
        Ok(inbound) => {
            match &inbound {
                Inbound::Message(msg) => {
                    for text in [msg.text.as_str(), tricky_text(), ""] {
                        if let Some(answer) = adapter.inline_reply(msg, text, req.now) {
                            open_and_seal(adapter, &answer.body, answer.content_type, req);
                        }
                        let _ = adapter.reply_calls(msg, text);
                    }
                    let _ = adapter.ack(msg);
                    passthrough(adapter, req);
                }
                Inbound::Answer { response, .. } | Inbound::Skip { response, .. } => {
                    let _ = response.status;
                }
            }
            Some(inbound)
        }
        Err(rej) => {
            let _ = (rej.status(), rej.kind(), rej.to_string());
            None
        }
    }
}

/// An adapter's own inline answer opens (decrypts) for egress DLP, and the
/// opened answer, rewritten, seals again.
fn open_and_seal<A: PlatformAdapter>(
    adapter: &A,
    body: &[u8],
    content_type: &'static str,
    req: &WebhookRequest<'_>,
) {
    let ct = Some(content_type).filter(|c| !c.is_empty());
    let mut opened = adapter
        .open_answer(ct, body)
        .expect("the adapter's own answer opens");
    if opened
        .texts_mut(adapter.opaque_keys(), &mut |s: &mut String| s.push_str("]]>&<"))
        .is_ok()
    {
        let _ = adapter.seal_answer(&opened, req.now);
    }
}

/// Passthrough of a verified message: its payload is scanned and masked,
/// and whatever the adapter reseals verifies and parses again as a message.
fn passthrough<A: PlatformAdapter>(adapter: &A, req: &WebhookRequest<'_>) {
    let Ok(mut payload) = adapter.payload(req) else {
        return;
    };
    let walked = payload.texts_mut(adapter.opaque_keys(), &mut |s: &mut String| {
        s.push_str(" **** ]]>&<");
    });
    if walked.is_err() {
        return;
    }
    let Some(sealed) = adapter.reseal_payload(req, &payload) else {
        return;
    };
    let headers = resealed_headers(req.headers, &sealed);
    let again = WebhookRequest {
        query: sealed.query.as_deref().or(req.query),
        headers: &headers,
        body: &sealed.body,
        ..*req
    };
    match adapter.receive(&again) {
        Ok(Inbound::Message(_)) | Ok(Inbound::Skip { .. }) | Ok(Inbound::Answer { .. }) => {}
        Err(e) => panic!("a resealed request must verify again: {e}"),
    }
}

fn resealed_headers(original: &HeaderMap, sealed: &Resealed) -> HeaderMap {
    let mut h = original.clone();
    for (k, v) in &sealed.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    h
}
