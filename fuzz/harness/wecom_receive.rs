//! WeCom: `WecomAdapter::receive` (GET URL verification and POST messages),
//! plus payload inspection and `reseal_payload` on every message that gets through.
//!
//! ctl & 3 (mode):
//!   0 raw: field 0 = the raw query string; the body as is.
//!   1 sign: fields 0 = timestamp, 1 = nonce; the body is the outer XML (POST)
//!     or the echostr (GET); the harness computes a valid `msg_signature`
//!     over the `Encrypt` it finds.
//!   2 encrypt: fields 0 = timestamp, 1 = nonce; the body is the *inner*
//!     plaintext XML (POST) or echo text (GET), encrypted by the harness with
//!     the route's key and corp id, wrapped and signed.
//!   3 encrypt with field 2 as the receive id (wrong ids must be refused).
//! bit 2: legacy-sample config (else the official sample); bit 3: GET;
//! bits 4-5: which vector timestamp is the fixed clock.

use std::sync::LazyLock;

use super::common::*;
use moltgate::platform::adapter::WebhookRequest;
use moltgate::platform::wecom::{self, WecomAdapter};
use moltgate::platform::wxcrypt::{self, WxCrypt};

struct Route {
    token: &'static str,
    key: &'static str,
    corp_id: &'static str,
}

const ROUTES: [Route; 2] = [
    Route {
        token: "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo",
        key: "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt",
        corp_id: "ww1436e0e65a779aee",
    },
    Route {
        token: "QDG6eK",
        key: "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        corp_id: "wx5823bf96d3bd56c7",
    },
];

/// The vectors' timestamps: official message, official verify_url, legacy message, legacy verify_url.
const CLOCKS: [u64; 4] = [1_476_422_779, 1_476_416_373, 1_409_659_813, 1_409_659_589];

static ADAPTERS: LazyLock<Vec<(WecomAdapter, WxCrypt)>> = LazyLock::new(|| {
    ROUTES
        .iter()
        .map(|r| {
            let a = WecomAdapter::new(
                &secrets(&[
                    ("token", r.token),
                    ("encoding_aes_key", r.key),
                    ("corp_id", r.corp_id),
                    ("agent_id", "1000002"),
                    ("corp_secret", "fuzz-secret"),
                ]),
                Some("http://127.0.0.1:9"),
            )
            .unwrap();
            (a, WxCrypt::from_encoding_aes_key(r.key).unwrap())
        })
        .collect()
});

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 3) else {
        return;
    };
    let which = usize::from(inp.bit(2));
    let route = &ROUTES[which];
    let (adapter, crypt) = &ADAPTERS[which];
    let get = inp.bit(3);
    let now = at_secs(CLOCKS[usize::from((inp.ctl >> 4) & 3)]);
    let mode = inp.ctl & 3;

    let (query, body): (String, Vec<u8>) = if mode == 0 {
        (inp.text(0).into_owned(), inp.body.to_vec())
    } else {
        let ts = inp.text(0);
        let nonce = inp.text(1);
        // The Encrypt value and the body that carries it.
        let (encrypt, body) = if mode == 1 {
            let enc = if get {
                Some(String::from_utf8_lossy(inp.body).into_owned())
            } else {
                std::str::from_utf8(inp.body)
                    .ok()
                    .and_then(|s| wecom::parse_xml(s).ok())
                    .and_then(|f| f.get("Encrypt").map(str::to_string))
            };
            (enc, inp.body.to_vec())
        } else {
            let rid = if mode == 3 {
                inp.text(2).into_owned()
            } else {
                route.corp_id.to_string()
            };
            let enc = crypt.encrypt(inp.body, &rid, &[b'r'; 16]);
            let body = if get {
                Vec::new()
            } else {
                format!(
                    "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>",
                    route.corp_id
                )
                .into_bytes()
            };
            (Some(enc), body)
        };
        let enc = encrypt.unwrap_or_default();
        let sig = wxcrypt::msg_signature(route.token, &ts, &nonce, &enc);
        let mut q = format!(
            "msg_signature={sig}&timestamp={}&nonce={}",
            pct(&ts),
            pct(&nonce)
        );
        if get {
            q.push_str(&format!("&echostr={}", pct(&enc)));
        }
        (q, body)
    };

    let h = headers(&[("content-type", Some(b"text/xml"))]);
    let req = WebhookRequest {
        method: method(get),
        query: Some(&query),
        headers: &h,
        body: &body,
        now,
        bearer: None,
    };
    // `drive` runs payload → mask → reseal_payload → receive on every message.
    let _ = drive(adapter, &req);
}
