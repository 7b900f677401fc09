//! Stage: has this message been seen before? A platform redelivers when it
//! did not get a timely 2xx; the first delivery claims the message id, and
//! `super::finish` commits the claim once the message is settled (the AI
//! cluster accepted it, the bot answered 2xx, or a policy decided) or
//! releases it, so that a redelivery after a failure is processed again.

use super::stop::Stop;
use crate::dedupe::{Claim, Dedupe, Seen};
use crate::platform::PlatformMessage;

/// Claims `msg`'s id. Messages without an id (the generic API) are not deduplicated.
pub fn claim(dedupe: &Dedupe, msg: &PlatformMessage) -> Result<Option<Claim>, Stop> {
    if msg.message_id.is_empty() {
        return Ok(None);
    }
    match dedupe.check(&msg.message_id) {
        (Seen::New, claim) => Ok(claim),
        (Seen::Done, _) => Err(Stop::Duplicate),
        // The first delivery is still being handled; if it fails the
        // platform must be able to deliver again, so this is not a 200.
        (Seen::InFlight, _) => Err(Stop::DuplicateInFlight),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(id: &str) -> PlatformMessage {
        PlatformMessage {
            message_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn first_claims_redelivery_waits_then_duplicates() {
        let d = Dedupe::new(100, Duration::from_secs(60));
        let first = claim(&d, &msg("m1")).unwrap().unwrap();
        assert!(matches!(
            claim(&d, &msg("m1")),
            Err(Stop::DuplicateInFlight)
        ));
        first.commit();
        assert!(matches!(claim(&d, &msg("m1")), Err(Stop::Duplicate)));
        assert!(claim(&d, &msg("")).unwrap().is_none());
    }

    #[test]
    fn a_released_claim_lets_the_redelivery_through() {
        let d = Dedupe::new(100, Duration::from_secs(60));
        drop(claim(&d, &msg("m1")).unwrap());
        assert!(claim(&d, &msg("m1")).unwrap().is_some());
    }
}
