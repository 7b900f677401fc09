//! Stage: which person is this? `identities.yaml` links platform accounts
//! to one person, so rate limits, confirmations and context follow the
//! person across platforms.

use crate::platform::PlatformMessage;
use crate::policy::PolicySet;

/// The sender, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The linked person, if any.
    pub person: Option<String>,
    /// `platform:sender`, or `platform:tenant:sender`: the rate limiter's user key.
    pub user_key: String,
    /// Who answers a confirmation: `person:<id>` when linked, else `user_key`.
    pub key: String,
}

/// Resolves the sender of `msg` on `platform`.
pub fn identify(policies: &PolicySet, platform: &str, msg: &PlatformMessage) -> Who {
    let person = policies
        .identities
        .person_of(platform, &msg.tenant, &msg.sender_id)
        .map(str::to_string);
    // User ids are unique per tenant only (WeCom, DingTalk corps), so limits
    // and confirmations are keyed by both.
    let user_key = match msg.tenant.as_str() {
        "" => format!("{platform}:{}", msg.sender_id),
        tenant => format!("{platform}:{tenant}:{}", msg.sender_id),
    };
    let key = match &person {
        Some(p) => format!("person:{p}"),
        None => user_key.clone(),
    };
    Who {
        person,
        user_key,
        key,
    }
}
