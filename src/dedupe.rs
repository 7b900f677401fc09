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
//!
//! The table is a few mutex-guarded shards of two generations each, not a
//! `moka` cache: under load (issue 11) moka's insert path cost about 5 % of
//! the passthrough path's CPU, for an eviction policy this table does not
//! need. An id is remembered for at least `ttl`: each shard starts a new
//! generation once its current one is `ttl` old (or half the shard's share
//! of the capacity), and forgets the generation before it.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

const SHARDS: usize = 16;

/// One shard: the ids of the current generation and of the one before.
struct Generations {
    current: HashMap<Box<str>, Arc<AtomicBool>>,
    previous: HashMap<Box<str>, Arc<AtomicBool>>,
    started: Instant,
}

impl Generations {
    /// Starts a new generation when the current one is `ttl` old or holds
    /// `limit` ids. An id therefore lives between `ttl` and `2 * ttl` unless
    /// the table is full, when the oldest generation goes first.
    fn age(&mut self, ttl: Duration, limit: usize) {
        let age = self.started.elapsed();
        if age >= ttl || self.current.len() >= limit {
            self.previous = if age >= ttl.saturating_mul(2) {
                HashMap::new()
            } else {
                std::mem::take(&mut self.current)
            };
            self.current.clear();
            self.started = Instant::now();
        }
    }

    fn get(&self, id: &str) -> Option<&Arc<AtomicBool>> {
        self.current.get(id).or_else(|| self.previous.get(id))
    }

    /// Forgets `id` if it still maps to `done` (a released claim).
    fn release(&mut self, id: &str, done: &Arc<AtomicBool>) {
        for map in [&mut self.current, &mut self.previous] {
            if map.get(id).is_some_and(|d| Arc::ptr_eq(d, done)) {
                map.remove(id);
            }
        }
    }
}

struct Table {
    shards: Vec<Mutex<Generations>>,
    hasher: RandomState,
    ttl: Duration,
    /// Ids per generation and shard.
    limit: usize,
}

impl Table {
    fn shard(&self, id: &str) -> MutexGuard<'_, Generations> {
        let i = (self.hasher.hash_one(id) as usize) % self.shards.len();
        // A panic while holding a shard cannot leave a map half-updated in a
        // way that matters here: use the data as it is.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Remembered message ids, per route.
#[derive(Clone)]
pub struct Dedupe {
    table: Arc<Table>,
}

/// A claim on a message id; releases it on drop unless committed.
pub struct Claim {
    table: Arc<Table>,
    key: Box<str>,
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
            self.table.shard(&self.key).release(&self.key, &self.done);
        }
    }
}

impl Dedupe {
    /// Remembers up to about `capacity` ids, each for at least `ttl` (at
    /// least the platform's retry window).
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let per_shard = usize::try_from(capacity).unwrap_or(usize::MAX) / SHARDS;
        Self {
            table: Arc::new(Table {
                shards: (0..SHARDS)
                    .map(|_| {
                        Mutex::new(Generations {
                            current: HashMap::new(),
                            previous: HashMap::new(),
                            started: Instant::now(),
                        })
                    })
                    .collect(),
                hasher: RandomState::new(),
                ttl,
                limit: (per_shard / 2).max(1),
            }),
        }
    }

    /// Looks `id` up and claims it if it is new. Atomic: of two concurrent
    /// deliveries exactly one gets [`Seen::New`].
    pub fn check(&self, id: &str) -> (Seen, Option<Claim>) {
        let mut shard = self.table.shard(id);
        shard.age(self.table.ttl, self.table.limit);
        if let Some(done) = shard.get(id) {
            return if done.load(Ordering::Acquire) {
                (Seen::Done, None)
            } else {
                (Seen::InFlight, None)
            };
        }
        let done = Arc::new(AtomicBool::new(false));
        let key: Box<str> = id.into();
        shard.current.insert(key.clone(), done.clone());
        drop(shard);
        (
            Seen::New,
            Some(Claim {
                table: self.table.clone(),
                key,
                done,
                committed: false,
            }),
        )
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

    #[test]
    fn ids_are_remembered_for_the_ttl_then_forgotten() {
        let ttl = Duration::from_millis(40);
        let d = Dedupe::new(1000, ttl);
        d.check("m1").1.unwrap().commit();
        assert_eq!(d.check("m1").0, Seen::Done);
        // Past two generations the id is gone in every shard.
        std::thread::sleep(ttl * 2 + Duration::from_millis(5));
        assert_eq!(d.check("m1").0, Seen::New);
    }

    #[test]
    fn a_full_table_forgets_its_oldest_generation_first() {
        // 16 shards, 2 ids per generation and shard.
        let d = Dedupe::new(64, Duration::from_secs(3600));
        for i in 0..10_000 {
            d.check(&format!("id{i}")).1.unwrap().commit();
        }
        let remembered = (0..10_000)
            .filter(|i| d.check(&format!("id{i}")).0 == Seen::Done)
            .count();
        assert!(remembered <= 64, "{remembered} ids kept, capacity 64");
        // The newest id is always remembered.
        assert_eq!(d.check("id9999").0, Seen::Done);
    }
}
