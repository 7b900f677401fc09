//! Discord: `DiscordAdapter::receive` on fuzzed headers and body.
//!
//! Fields: 0 = X-Signature-Ed25519, 1 = X-Signature-Timestamp.
//! ctl bit 0: the harness signs timestamp + body with the RFC 8032 TEST 1
//! secret key (the adapter holds its public key), reaching `parse_interaction`;
//! bit 7: GET.

use std::sync::LazyLock;

use super::common::*;
use ed25519_dalek::{Signer, SigningKey};
use moltgate::platform::adapter::WebhookRequest;
use moltgate::platform::discord::{self, DiscordAdapter, SIGNATURE_HEADER, TIMESTAMP_HEADER};

const SECRET_KEY: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const PUBLIC_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
/// The signed PING vector's timestamp (the fixed clock).
const NOW: u64 = 1_700_000_000;

static ADAPTER: LazyLock<DiscordAdapter> = LazyLock::new(|| {
    DiscordAdapter::new(
        &secrets(&[("public_key", PUBLIC_KEY), ("application_id", "123456")]),
        Some("http://127.0.0.1:9"),
    )
    .unwrap()
});

static KEY: LazyLock<SigningKey> = LazyLock::new(|| {
    let b: [u8; 32] = hex_decode(SECRET_KEY).try_into().unwrap();
    SigningKey::from_bytes(&b)
});

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 2) else {
        return;
    };
    let signature = if inp.bit(0) {
        let mut msg = inp.field(1).unwrap_or_default().to_vec();
        msg.extend_from_slice(inp.body);
        Some(hex_encode(&KEY.sign(&msg).to_bytes()).into_bytes())
    } else {
        inp.field(0).map(<[u8]>::to_vec)
    };
    let h = headers(&[
        (SIGNATURE_HEADER, signature.as_deref()),
        (TIMESTAMP_HEADER, inp.field(1)),
    ]);
    let req = WebhookRequest {
        method: method(inp.bit(7)),
        query: None,
        headers: &h,
        body: inp.body,
        now: at_secs(NOW),
        bearer: None,
    };
    drive(&*ADAPTER, &req);
    let _ = discord::parse_interaction(inp.body);
}
