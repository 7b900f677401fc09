//! Generic HTTP API: `generic::parse` on any body, then
//! `to_platform_message` with a fixed subject. The whole input is the body.

use moltgate::platform::generic;
use moltgate::policy::jwt::Subject;

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    if let Ok(msg) = generic::parse(data) {
        if let Some(ct) = msg.context.as_ref().and_then(|c| c.chat_type.as_deref()) {
            assert!(matches!(ct, "private" | "group" | "channel"));
        }
        let subject = Subject {
            id: "alice".into(),
            tenant: "acme".into(),
            ..Default::default()
        };
        let text = msg.content.text.clone();
        let p = generic::to_platform_message(msg, &subject);
        assert_eq!(p.text, text);
        assert_eq!(p.sender_id, "alice");
    }
}
