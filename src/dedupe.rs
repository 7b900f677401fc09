//! Redelivery detection: a platform that did not get its acknowledgement in
//! time sends the same message again, and the assistant must see it once.
//!
//! The cache lives beside the conversation context, not inside it, so a
//! context eviction can never let a redelivery through. An id is claimed
//! while its message is in flight and committed once the message reached a
//! final decision (accepted by a node, or refused by policy). If processing
//! fails in a way that asks the platform to retry (503), the claim is
//! released, so the redelivery is processed instead of being dropped: a
//! message is never acknowledged and then lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

/// What a message id's previous deliveries tell about this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First delivery: process it (the returned claim must be committed).
    New,
    /// An earlier delivery reached a final decision: acknowledge, do not forward.
    Done,
    /// An earlier delivery is still being processed: ask the platform to retry later.
    InFlight,
}

/// Remembered message ids, per route.
#[derive(Clone)]
pub struct Dedupe {
    ids: Cache<String, Arc<AtomicBool>>,
}

/// A claim on a message id; releases it on drop unless committed.
pub struct Claim {
    ids: Cache<String, Arc<AtomicBool>>,
    key: String,
    done: Arc<AtomicBool>,
    committed: bool,
}

impl Claim {
    /// The message reached a final decision: later deliveries are duplicates.
    pub fn commit(mut self) {
        self.done.store(true, Ordering::Release);
        self.committed = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.committed {
            self.ids.invalidate(&self.key);
        }
    }
}

impl Dedupe {
    /// Remembers up to `capacity` ids, each for `ttl` (at least the
    /// platform's retry window).
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            ids: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Looks `id` up and claims it if it is new. Atomic: of two concurrent
    /// deliveries exactly one gets [`Seen::New`].
    pub fn check(&self, id: &str) -> (Seen, Option<Claim>) {
        let entry = self
            .ids
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(AtomicBool::new(false)));
        if entry.is_fresh() {
            let done = entry.into_value();
            return (
                Seen::New,
                Some(Claim {
                    ids: self.ids.clone(),
                    key: id.to_string(),
                    done,
                    committed: false,
                }),
            );
        }
        if entry.value().load(Ordering::Acquire) {
            (Seen::Done, None)
        } else {
            (Seen::InFlight, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_ids_are_duplicates() {
        let d = Dedupe::new(100, Duration::from_secs(60));
        let (seen, claim) = d.check("m1");
        assert_eq!(seen, Seen::New);
        assert_eq!(d.check("m1").0, Seen::InFlight);
        claim.unwrap().commit();
        assert_eq!(d.check("m1").0, Seen::Done);
        assert_eq!(d.check("m2").0, Seen::New);
    }

    #[test]
    fn released_claims_let_the_redelivery_through() {
        let d = Dedupe::new(100, Duration::from_secs(60));
        let (_, claim) = d.check("m1");
        drop(claim); // e.g. no node accepted: 503, the platform retries
        let (seen, claim) = d.check("m1");
        assert_eq!(seen, Seen::New);
        claim.unwrap().commit();
        assert_eq!(d.check("m1").0, Seen::Done);
    }

    #[test]
    fn concurrent_deliveries_claim_once() {
        let d = Dedupe::new(1000, Duration::from_secs(60));
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let d = d.clone();
                    s.spawn(move || {
                        let (seen, claim) = d.check("same");
                        if let Some(c) = claim {
                            c.commit();
                        }
                        usize::from(seen == Seen::New)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
    }
}
