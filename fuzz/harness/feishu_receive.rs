//! Feishu / Lark: `FeishuAdapter::receive`, plain and encrypted.
//!
//! Fields: 0 = X-Lark-Request-Timestamp, 1 = X-Lark-Request-Nonce,
//! 2 = X-Lark-Signature.
//! ctl bit 0: use the adapter with `encrypt_key` set (else token-only);
//! bit 1: the harness replaces the signature with a valid one over the
//! (final) body; bit 2: the body is a plaintext event that the harness wraps
//! as `{"encrypt": AES(...)}` with the vector key; bit 7: GET.

use std::sync::LazyLock;

use super::common::*;
use moltgate::platform::adapter::WebhookRequest;
use moltgate::platform::feishu::{self, FeishuAdapter};

/// The published vectors' encrypt key and signature timestamp (fixed clock).
const KEY: &str = "test key";
const TOKEN: &str = "vtoken";
const NOW: u64 = 1_700_000_000;

fn adapter(encrypt_key: Option<&str>) -> FeishuAdapter {
    let mut s = secrets(&[
        ("verification_token", TOKEN),
        ("app_id", "cli_123"),
        ("app_secret", "shh"),
    ]);
    if let Some(k) = encrypt_key {
        s.insert("encrypt_key".into(), k.into());
    }
    FeishuAdapter::new(&s, Some("http://127.0.0.1:9")).unwrap()
}

static PLAIN: LazyLock<FeishuAdapter> = LazyLock::new(|| adapter(None));
static ENCRYPTED: LazyLock<FeishuAdapter> = LazyLock::new(|| adapter(Some(KEY)));

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 3) else {
        return;
    };
    let body: Vec<u8> = if inp.bit(2) {
        let enc = feishu::encrypt(KEY, inp.body, &[0x42; 16]);
        serde_json::json!({ "encrypt": enc })
            .to_string()
            .into_bytes()
    } else {
        inp.body.to_vec()
    };
    let signature = if inp.bit(1) {
        Some(feishu::signature(&inp.text(0), &inp.text(1), KEY, &body).into_bytes())
    } else {
        inp.field(2).map(<[u8]>::to_vec)
    };
    let h = headers(&[
        ("x-lark-request-timestamp", inp.field(0)),
        ("x-lark-request-nonce", inp.field(1)),
        ("x-lark-signature", signature.as_deref()),
    ]);
    let req = WebhookRequest {
        method: method(inp.bit(7)),
        query: None,
        headers: &h,
        body: &body,
        now: at_secs(NOW),
        bearer: None,
    };
    let adapter: &FeishuAdapter = if inp.bit(0) { &ENCRYPTED } else { &PLAIN };
    drive(adapter, &req);
    if let Ok(v) = serde_json::from_slice(inp.body) {
        let _ = adapter.parse_event(&v);
    }
    let _ = feishu::strip_mentions(&String::from_utf8_lossy(inp.body));
}
