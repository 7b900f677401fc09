//! Slack: `SlackAdapter::receive` on fuzzed headers and body.
//!
//! Fields: 0 = X-Slack-Request-Timestamp, 1 = X-Slack-Signature.
//! ctl bit 0: the harness replaces the signature with a valid one over the
//! fuzzed timestamp and body (reaches `parse_payload`); bit 7: GET.

use std::sync::LazyLock;

use super::common::*;
use moltgate::platform::adapter::WebhookRequest;
use moltgate::platform::slack::{self, SlackAdapter, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// The published vector's signing secret and timestamp (the fixed clock).
const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const NOW: u64 = 1_531_420_618;

static ADAPTER: LazyLock<SlackAdapter> = LazyLock::new(|| {
    SlackAdapter::new(
        &secrets(&[("signing_secret", SECRET), ("bot_token", "xoxb-fuzz")]),
        Some("http://127.0.0.1:9"),
    )
    .unwrap()
});

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 2) else {
        return;
    };
    let signature = if inp.bit(0) {
        Some(slack::sign(SECRET, &inp.text(0), inp.body).into_bytes())
    } else {
        inp.field(1).map(<[u8]>::to_vec)
    };
    let h = headers(&[
        (TIMESTAMP_HEADER, inp.field(0)),
        (SIGNATURE_HEADER, signature.as_deref()),
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
    // The pure parser on its own, too (what a verified body reaches).
    let _ = slack::parse_payload(inp.body);
    let _ = slack::strip_mentions(&String::from_utf8_lossy(inp.body));
}
