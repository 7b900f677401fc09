//! Stages: second-step confirmation. A rule with `confirm: true` holds the
//! (masked) Envelope and sends the person a one-time code ([`hold`]); a
//! code-shaped reply from the same person, on any linked platform,
//! releases, rejects or expires it ([`release`]). The store itself lives in
//! `crate::context::confirm`.

use std::time::Instant;

use super::identity::Who;
use super::stop::Stop;
use crate::context::confirm::{self, ConfirmOutcome, ConfirmStore, HeldMessage};
use crate::proto::v1::Envelope;

/// If `text` answers a pending confirmation of `who`: the held Envelope to
/// forward, or the stop that a wrong or late code means. `Ok(None)`: not a
/// confirmation reply, the message goes on as itself.
pub fn release(store: &ConfirmStore, who: &Who, text: &str) -> Result<Option<Envelope>, Stop> {
    if !confirm::is_code_shaped(text) {
        return Ok(None);
    }
    match store.respond(&who.key, text, Instant::now()) {
        ConfirmOutcome::NotPending => Ok(None),
        ConfirmOutcome::Forward(held) => Ok(Some(held.envelope)),
        ConfirmOutcome::Wrong { remaining: 0 } => Err(Stop::ConfirmRejected),
        ConfirmOutcome::Wrong { remaining } => Err(Stop::ConfirmWrong { remaining }),
        ConfirmOutcome::Expired => Err(Stop::ConfirmExpired),
    }
}

/// Holds `envelope` for `who` and returns the stop that sends them the code.
pub fn hold(store: &ConfirmStore, who: &Who, envelope: Envelope) -> Stop {
    let code = store.hold(
        &who.key,
        HeldMessage {
            envelope,
            reply: serde_json::Value::Null,
        },
        Instant::now(),
    );
    Stop::ConfirmRequired {
        code,
        expires_in: store.ttl().as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn who() -> Who {
        Who {
            person: None,
            user_key: "slack:U1".into(),
            key: "slack:U1".into(),
        }
    }

    #[test]
    fn a_held_message_is_released_by_its_code_once() {
        let store = ConfirmStore::new(Duration::from_secs(60), 10, 3);
        let env = Envelope {
            id: "e1".into(),
            ..Default::default()
        };
        let Stop::ConfirmRequired { code, expires_in } = hold(&store, &who(), env) else {
            panic!("hold must ask for a code");
        };
        assert_eq!(expires_in, 60);
        assert!(release(&store, &who(), "hello").unwrap().is_none());
        let released = release(&store, &who(), &code).unwrap().unwrap();
        assert_eq!(released.id, "e1");
        assert!(release(&store, &who(), &code).unwrap().is_none());
    }

    #[test]
    fn wrong_codes_count_down_then_reject() {
        let store = ConfirmStore::new(Duration::from_secs(60), 10, 2);
        let Stop::ConfirmRequired { code, .. } = hold(&store, &who(), Envelope::default()) else {
            panic!("hold must ask for a code");
        };
        let wrong = if code == "000000" { "111111" } else { "000000" };
        assert!(matches!(
            release(&store, &who(), wrong),
            Err(Stop::ConfirmWrong { remaining: 1 })
        ));
        assert!(matches!(
            release(&store, &who(), wrong),
            Err(Stop::ConfirmRejected)
        ));
    }
}
