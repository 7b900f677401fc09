//! Stage: has this message been seen before? A platform redelivers when it
//! did not get a timely 2xx; the first delivery claims the message id, and
//! `super::finish` commits the claim once the message is settled (the AI
//! cluster accepted it, the bot answered 2xx, or a policy decided) or
//! releases it, so that a redelivery after a failure is processed again.
//!
//! With `shared:` the claim has two levels: this node's table
//! (`crate::dedupe`, so a redelivery to the same node costs no round trip)
//! and then Redis (`crate::shared::claims`, so a redelivery that reaches
//! another node is recognised there). While Redis fails, `on_error`
//! decides: `allow` and `local` go on with this node's claim alone, `deny`
//! answers 503 with `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use super::stop::Stop;
use crate::config::OnError;
use crate::dedupe::{Claim, Dedupe, Seen};
use crate::platform::PlatformMessage;
use crate::shared::claims::RemoteClaim;
use crate::shared::Shared;

/// A message id claimed by this request, on this node and, with `shared:`,
/// on every node. Released if dropped unsettled.
pub struct Claimed {
    local: Option<Claim>,
    remote: Option<Remote>,
}

struct Remote {
    shared: Arc<Shared>,
    claim: RemoteClaim,
    done_ttl: Duration,
}

impl Claimed {
    /// Commits (`settled`: later deliveries are duplicates) or releases
    /// (the sender retries, and the retry is processed) the claim.
    pub async fn settle(mut self, settled: bool) {
        if let Some(local) = self.local.take() {
            if settled {
                local.commit();
            } // else dropped: released
        }
        let Some(remote) = self.remote.take() else {
            return;
        };
        let result = if settled {
            remote.shared.commit(&remote.claim, remote.done_ttl).await
        } else {
            remote.shared.release(&remote.claim).await
        };
        if let Err(e) = result {
            // The claim expires after `shared.claim_ttl`; until then a
            // redelivery elsewhere is asked to retry, never lost.
            tracing::debug!(error = %e, settled, "shared dedupe claim not settled");
        }
    }
}

impl Drop for Claimed {
    /// A request that ends without settling (its future dropped) releases
    /// its shared claim in the background, so the redelivery is processed.
    fn drop(&mut self) {
        if let Some(remote) = self.remote.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = remote.shared.release(&remote.claim).await;
                });
            }
        }
    }
}

/// Claims `msg`'s id on `route_path`. Messages without an id (the generic
/// API) are not deduplicated.
pub async fn claim(
    dedupe: &Dedupe,
    shared: Option<&Arc<Shared>>,
    route_path: &str,
    done_ttl: Duration,
    msg: &PlatformMessage,
) -> Result<Option<Claimed>, Stop> {
    if msg.message_id.is_empty() {
        return Ok(None);
    }
    let local = match dedupe.check(&msg.message_id) {
        (Seen::New, claim) => claim,
        (Seen::Done, _) => return Err(Stop::Duplicate),
        // The first delivery is still being handled; if it fails the
        // platform must be able to deliver again, so this is not a 200.
        (Seen::InFlight, _) => return Err(Stop::DuplicateInFlight),
    };
    let Some(shared) = shared else {
        return Ok(Some(Claimed {
            local,
            remote: None,
        }));
    };
    let remote = shared.new_claim(route_path, &msg.message_id);
    // Kept even when the claim fails: it may land later (see
    // `crate::shared::claims`), so it is settled like one that succeeded.
    let held = || {
        Some(Remote {
            shared: shared.clone(),
            claim: remote.clone(),
            done_ttl,
        })
    };
    match shared.claim(&remote).await {
        Ok(Seen::New) => Ok(Some(Claimed {
            local,
            remote: held(),
        })),
        Ok(Seen::Done) => {
            // Settled on another node: remember it here too.
            if let Some(local) = local {
                local.commit();
            }
            Err(Stop::Duplicate)
        }
        Ok(Seen::InFlight) => Err(Stop::DuplicateInFlight),
        Err(_) if shared.on_error() == OnError::Deny => {
            let _ = shared.release(&remote).await;
            Err(Stop::SharedUnavailable)
        }
        // allow and local: this node's claim decides.
        Err(_) => Ok(Some(Claimed {
            local,
            remote: held(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> PlatformMessage {
        PlatformMessage {
            message_id: id.into(),
            ..Default::default()
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn first_claims_redelivery_waits_then_duplicates() {
        let d = Dedupe::new(100, TTL);
        let first = block_on(claim(&d, None, "/r", TTL, &msg("m1")))
            .unwrap()
            .unwrap();
        assert!(matches!(
            block_on(claim(&d, None, "/r", TTL, &msg("m1"))),
            Err(Stop::DuplicateInFlight)
        ));
        block_on(first.settle(true));
        assert!(matches!(
            block_on(claim(&d, None, "/r", TTL, &msg("m1"))),
            Err(Stop::Duplicate)
        ));
        assert!(block_on(claim(&d, None, "/r", TTL, &msg("")))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_released_claim_lets_the_redelivery_through() {
        let d = Dedupe::new(100, TTL);
        let first = block_on(claim(&d, None, "/r", TTL, &msg("m1")))
            .unwrap()
            .unwrap();
        block_on(first.settle(false));
        assert!(block_on(claim(&d, None, "/r", TTL, &msg("m1")))
            .unwrap()
            .is_some());
    }
}
