//! DingTalk: `DingtalkAdapter::receive`, robot callbacks and encrypted
//! event subscriptions; for messages, `reply_calls` checks the body-supplied
//! `sessionWebhook` against the API origin.
//!
//! ctl & 3 (mode):
//!   0 raw: fields 0 = `timestamp` header, 1 = `sign` header, 2 = raw query
//!     (empty = absent).
//!   1 robot: field 0 = `timestamp` header; the harness adds a valid `sign`.
//!   2 event sign: fields 0 = timestamp, 1 = nonce; the body is the JSON
//!     envelope; the harness signs the `encrypt` it finds and builds the query.
//!   3 event encrypt: fields 0 = timestamp, 1 = nonce, 2 = receive id (owner
//!     key when absent); the body is the plaintext event, encrypted, wrapped
//!     and signed by the harness.
//! bit 2: `msg_signature` rather than `signature` in the query; bit 3: robot-only
//! route (no event secrets); bit 4: clock at the event vector (else the robot
//! vector); bit 7: GET.

use std::sync::LazyLock;

use super::common::*;
use moltgate::platform::adapter::WebhookRequest;
use moltgate::platform::dingtalk::{self, DingtalkAdapter};
use moltgate::platform::wxcrypt::{self, WxCrypt};

const APP_SECRET: &str = "test_app_secret";
const TOKEN: &str = "123456";
const AES_KEY: &str = "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij";
const OWNER_KEY: &str = "suite4xxxxxxxxxxxxxxx";
/// Robot-sign and event-crypto vector timestamps (milliseconds).
const CLOCKS: [u64; 2] = [1_577_262_236_757, 1_445_827_045_067];

static BOTH: LazyLock<DingtalkAdapter> = LazyLock::new(|| {
    DingtalkAdapter::new(
        &secrets(&[
            ("app_secret", APP_SECRET),
            ("token", TOKEN),
            ("aes_key", AES_KEY),
            ("owner_key", OWNER_KEY),
        ]),
        None,
    )
    .unwrap()
});
static ROBOT: LazyLock<DingtalkAdapter> =
    LazyLock::new(|| DingtalkAdapter::new(&secrets(&[("app_secret", APP_SECRET)]), None).unwrap());
static CRYPT: LazyLock<WxCrypt> =
    LazyLock::new(|| WxCrypt::from_encoding_aes_key(AES_KEY).unwrap());

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 3) else {
        return;
    };
    let adapter: &DingtalkAdapter = if inp.bit(3) { &ROBOT } else { &BOTH };
    let now = at_millis(CLOCKS[usize::from(inp.bit(4))]);
    let sig_param = if inp.bit(2) {
        "msg_signature"
    } else {
        "signature"
    };

    let mut ts_header: Option<Vec<u8>> = None;
    let mut sign_header: Option<Vec<u8>> = None;
    let mut query: Option<String> = None;
    let mut body = inp.body.to_vec();
    match inp.ctl & 3 {
        0 => {
            // Here an empty field is an absent header or query, so raw seeds
            // can reach the event path too.
            let nonempty = |i| inp.field(i).filter(|f: &&[u8]| !f.is_empty());
            ts_header = nonempty(0).map(<[u8]>::to_vec);
            sign_header = nonempty(1).map(<[u8]>::to_vec);
            query = nonempty(2).map(|q| String::from_utf8_lossy(q).into_owned());
        }
        1 => {
            ts_header = inp.field(0).map(<[u8]>::to_vec);
            sign_header = Some(dingtalk::robot_sign(APP_SECRET, inp.text(0).trim()).into_bytes());
        }
        mode => {
            let ts = inp.text(0);
            let nonce = inp.text(1);
            let encrypt = if mode == 2 {
                serde_json::from_slice::<serde_json::Value>(inp.body)
                    .ok()
                    .and_then(|v| v.get("encrypt")?.as_str().map(str::to_string))
                    .unwrap_or_default()
            } else {
                let rid = inp
                    .field(2)
                    .map_or_else(|| OWNER_KEY.into(), |_| inp.text(2));
                let enc = CRYPT.encrypt(inp.body, &rid, &[b'd'; 16]);
                body = serde_json::json!({ "encrypt": enc })
                    .to_string()
                    .into_bytes();
                enc
            };
            let sig = wxcrypt::msg_signature(TOKEN, &ts, &nonce, &encrypt);
            query = Some(format!(
                "{sig_param}={sig}&timestamp={}&nonce={}",
                pct(&ts),
                pct(&nonce)
            ));
        }
    }
    let h = headers(&[
        ("timestamp", ts_header.as_deref()),
        ("sign", sign_header.as_deref()),
    ]);
    let req = WebhookRequest {
        method: method(inp.bit(7)),
        query: query.as_deref(),
        headers: &h,
        body: &body,
        now,
        bearer: None,
    };
    drive(adapter, &req);
    if let Ok(v) = serde_json::from_slice(inp.body) {
        let _ = adapter.parse_robot(&v);
    }
    let url = String::from_utf8_lossy(inp.body);
    let _ = dingtalk::session_webhook_allowed(&url, dingtalk::DEFAULT_API_BASE);
    let _ = dingtalk::session_webhook_allowed(dingtalk::DEFAULT_API_BASE, &url);
}
