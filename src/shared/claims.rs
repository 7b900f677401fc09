//! Dedupe claims shared by every node: a redelivery that reaches another
//! node is recognised there.
//!
//! Key: `{prefix}dedupe:{route}:{message id}` (the id hashed when long, see
//! [`super::key_text`]). Values:
//! - `inflight:<node>:<uuid>` while one node processes the message, for
//!   `shared.claim_ttl` (`SET … NX PX`); a node that dies holding it lets
//!   the redelivery through once it expires;
//! - `done`, once the AI cluster accepted the message or the bot answered
//!   2xx (or a policy settled it), for the platform's redelivery window.
//!
//! A claim is committed or released by compare-and-delete on its own
//! token, so a node never commits or drops a claim another node holds.
//! The local table (`crate::dedupe`) stays the first level: a redelivery to
//! the same node never costs a round trip.
//!
//! A claim whose command failed may still land: a stopped Redis runs what
//! was queued on its socket when it resumes. So the caller keeps the claim
//! it tried to make, and settles it like any other; a commit or release
//! that fails is kept ([`Deferred`]) and retried after the next successful
//! probe, so a stray `inflight` never blocks a redelivery for the whole
//! `claim_ttl`.

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use redis::Script;

use super::{key_text, Shared, SharedError};
use crate::dedupe::Seen;

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS[1] claim key; ARGV[1] token; ARGV[2] claim ttl (ms)
-- Idempotent: a claim sent twice (a retry after a dropped connection) is ours.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return 1 end
if v == 'done' then return 2 end
return 3",
    )
});

static COMMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS[1] claim key; ARGV[1] token; ARGV[2] done ttl (ms)
-- Ours, or expired while we worked (we did process it): now done.
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or not v then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS[1] claim key; ARGV[1] token: delete only our own claim
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
    )
});

/// A claim this node holds (or tried to take) in Redis.
#[derive(Debug, Clone)]
pub struct RemoteClaim {
    key: String,
    token: String,
}

/// Most settlements kept for retry; beyond it the oldest are dropped (their
/// claims expire after `claim_ttl` anyway).
const MAX_DEFERRED: usize = 10_000;

/// Commits and releases that failed, retried once Redis answers again.
#[derive(Debug, Default)]
pub struct Deferred {
    queue: Mutex<VecDeque<(RemoteClaim, Option<Duration>)>>,
}

impl Deferred {
    fn push(&self, claim: RemoteClaim, commit: Option<Duration>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_DEFERRED {
            q.pop_front();
        }
        q.push_back((claim, commit));
    }

    fn take(&self) -> VecDeque<(RemoteClaim, Option<Duration>)> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Shared {
    /// The claim this node would take on message `id` of `route`.
    pub fn new_claim(&self, route: &str, id: &str) -> RemoteClaim {
        RemoteClaim {
            key: self.key("dedupe", &format!("{route}:{}", key_text(id))),
            token: format!(
                "inflight:{}:{}",
                self.node_id,
                uuid::Uuid::new_v4().simple()
            ),
        }
    }

    /// Takes `claim` for this node: [`Seen::New`] if it got it.
    pub async fn claim(&self, claim: &RemoteClaim) -> Result<Seen, SharedError> {
        let ttl = millis(self.claim_ttl);
        let answer: i64 = self
            .call("claim", |mut conn| async move {
                CLAIM
                    .key(&claim.key)
                    .arg(&claim.token)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match answer {
            1 => Ok(Seen::New),
            2 => Ok(Seen::Done),
            3 => Ok(Seen::InFlight),
            _ => Err(SharedError::Unexpected("claim script")),
        }
    }

    /// The message is settled: later deliveries anywhere are duplicates
    /// for `done_ttl`. Retried after the next probe if Redis fails now.
    pub async fn commit(&self, claim: &RemoteClaim, done_ttl: Duration) -> Result<(), SharedError> {
        let ttl = millis(done_ttl);
        let result = self
            .call("commit", |mut conn| async move {
                COMMIT
                    .key(&claim.key)
                    .arg(&claim.token)
                    .arg(ttl)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        if result.is_err() {
            self.deferred.push(claim.clone(), Some(done_ttl));
        }
        result.map(drop)
    }

    /// Processing failed in a way that asks the platform to retry: let the
    /// redelivery through on any node. Retried after the next probe if
    /// Redis fails now.
    pub async fn release(&self, claim: &RemoteClaim) -> Result<(), SharedError> {
        let result = self
            .call("release", |mut conn| async move {
                RELEASE
                    .key(&claim.key)
                    .arg(&claim.token)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        if result.is_err() {
            self.deferred.push(claim.clone(), None);
        }
        result.map(drop)
    }

    /// Runs the commits and releases that failed earlier (after a probe
    /// found Redis answering again). Those that fail again wait for the
    /// next probe.
    pub(super) async fn settle_deferred(&self) {
        for (claim, commit) in self.deferred.take() {
            let _ = match commit {
                Some(done_ttl) => self.commit(&claim, done_ttl).await,
                None => self.release(&claim).await,
            };
        }
    }
}
