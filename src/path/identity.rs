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
    /// `platform:sender`: the rate limiter's user key.
    pub user_key: String,
    /// Who answers a confirmation: `person:<id>` when linked, else `user_key`.
    pub key: String,
}

/// Resolves the sender of `msg` on `platform`.
pub fn identify(policies: &PolicySet, platform: &str, msg: &PlatformMessage) -> Who {
    let person = policies
        .identities
        .person_of(platform, &msg.sender_id)
        .map(str::to_string);
    let user_key = format!("{platform}:{}", msg.sender_id);
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
