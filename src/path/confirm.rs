//! Stages: second-step confirmation. A rule with `confirm: true` holds the
//! (masked) Envelope and sends the person a one-time code ([`hold`]); a
//! code-shaped reply from the same person, on any linked platform,
//! releases, rejects or expires it ([`release`]). The store itself lives in
//! `crate::context::confirm`; with `shared:` held messages are in Redis
//! (`crate::shared::confirmations`), so a code issued by one node is
//! accepted by any node, once. While Redis fails, this node's store holds
//! and releases them (a code held there during an outage still works here
//! after it).

use std::time::Instant;

use super::identity::Who;
use super::stop::Stop;
use crate::context::confirm::{self, ConfirmOutcome, ConfirmStore, HeldMessage};
use crate::proto::v1::Envelope;
use crate::shared::Shared;

/// If `text` answers a pending confirmation of `who`: the held Envelope to
/// forward, or the stop that a wrong or late code means. `Ok(None)`: not a
/// confirmation reply, the message goes on as itself.
pub async fn release(
    store: &ConfirmStore,
    shared: Option<&Shared>,
    who: &Who,
    text: &str,
) -> Result<Option<Envelope>, Stop> {
    if !confirm::is_code_shaped(text) {
        return Ok(None);
    }
    let remote = match shared {
        Some(shared) => shared.respond(&who.key, text).await.ok(),
        None => None,
    };
    let outcome = match remote {
        Some(ConfirmOutcome::NotPending) | None => store.respond(&who.key, text, Instant::now()),
        Some(outcome) => outcome,
    };
    match outcome {
        ConfirmOutcome::NotPending => Ok(None),
        ConfirmOutcome::Forward(held) => Ok(Some(held.envelope)),
        ConfirmOutcome::Wrong { remaining: 0 } => Err(Stop::ConfirmRejected),
        ConfirmOutcome::Wrong { remaining } => Err(Stop::ConfirmWrong { remaining }),
        ConfirmOutcome::Expired => Err(Stop::ConfirmExpired),
    }
}

/// Holds `envelope` for `who` and returns the stop that sends them the code.
pub async fn hold(
    store: &ConfirmStore,
    shared: Option<&Shared>,
    who: &Who,
    envelope: Envelope,
) -> Stop {
    if let Some(shared) = shared {
        let held = shared
            .hold(&who.key, &envelope, store.ttl(), store.attempts())
            .await;
        if let Ok(code) = held {
            return Stop::ConfirmRequired {
                code,
                expires_in: store.ttl().as_secs(),
            };
        }
    }
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
    use futures::executor::block_on;
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
        let Stop::ConfirmRequired { code, expires_in } = block_on(hold(&store, None, &who(), env))
        else {
            panic!("hold must ask for a code");
        };
        assert_eq!(expires_in, 60);
        assert!(block_on(release(&store, None, &who(), "hello"))
            .unwrap()
            .is_none());
        let released = block_on(release(&store, None, &who(), &code))
            .unwrap()
            .unwrap();
        assert_eq!(released.id, "e1");
        assert!(block_on(release(&store, None, &who(), &code))
            .unwrap()
            .is_none());
    }

    #[test]
    fn wrong_codes_count_down_then_reject() {
        let store = ConfirmStore::new(Duration::from_secs(60), 10, 2);
        let Stop::ConfirmRequired { code, .. } =
            block_on(hold(&store, None, &who(), Envelope::default()))
        else {
            panic!("hold must ask for a code");
        };
        let wrong = if code == "000000" { "111111" } else { "000000" };
        assert!(matches!(
            block_on(release(&store, None, &who(), wrong)),
            Err(Stop::ConfirmWrong { remaining: 1 })
        ));
        assert!(matches!(
            block_on(release(&store, None, &who(), wrong)),
            Err(Stop::ConfirmRejected)
        ));
    }
}
