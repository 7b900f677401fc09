//! Telegram: `TelegramAdapter::receive` on fuzzed headers and body.
//!
//! Fields: 0 = X-Telegram-Bot-Api-Secret-Token.
//! ctl bit 0: the harness presents the configured secret (reaches
//! `parse_update`); bit 7: GET.

use std::sync::LazyLock;

use super::common::*;
use moltgate::platform::adapter::WebhookRequest;
use moltgate::platform::telegram::{self, TelegramAdapter, SECRET_HEADER};

const SECRET: &str = "s3cr3t_token-1";
const NOW: u64 = 1_441_645_532;

static ADAPTER: LazyLock<TelegramAdapter> = LazyLock::new(|| {
    TelegramAdapter::new(
        &secrets(&[("secret_token", SECRET), ("bot_token", "123:ABC")]),
        Some("http://127.0.0.1:9/"),
    )
    .unwrap()
});

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 1) else {
        return;
    };
    let presented = if inp.bit(0) {
        Some(SECRET.as_bytes())
    } else {
        inp.field(0)
    };
    let h = headers(&[(SECRET_HEADER, presented)]);
    let req = WebhookRequest {
        method: method(inp.bit(7)),
        query: None,
        headers: &h,
        body: inp.body,
        now: at_secs(NOW),
        bearer: None,
    };
    drive(&*ADAPTER, &req);
    let _ = telegram::parse_update(inp.body);
    // split_utf16 must cover the text exactly, in order, within the limit.
    let text = String::from_utf8_lossy(inp.body);
    let max = usize::from(inp.ctl % 8) + 1;
    let parts = telegram::split_utf16(&text, max);
    assert_eq!(parts.concat(), text);
    for p in &parts {
        assert!(!p.is_empty());
        let units = p.encode_utf16().count();
        assert!(units <= max || p.chars().count() == 1, "{p:?} > {max}");
    }
}
