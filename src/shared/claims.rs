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

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{key_text, Shared, SharedError};
use crate::dedupe::Seen;

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS[1] claim key; ARGV[1] token; ARGV[2] claim ttl (ms)
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == 'done' then return 2 end
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

/// A claim this node holds in Redis.
#[derive(Debug, Clone)]
pub struct RemoteClaim {
    key: String,
    token: String,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Shared {
    /// Claims message `id` of `route` for this node. [`Seen::New`] comes
    /// with the claim to commit or release.
    pub async fn claim(
        &self,
        route: &str,
        id: &str,
    ) -> Result<(Seen, Option<RemoteClaim>), SharedError> {
        let key = self.key("dedupe", &format!("{route}:{}", key_text(id)));
        let token = format!(
            "inflight:{}:{}",
            self.node_id,
            uuid::Uuid::new_v4().simple()
        );
        let ttl = millis(self.claim_ttl);
        let (k, t) = (key.clone(), token.clone());
        let answer: i64 = self
            .call("claim", |mut conn| async move {
                CLAIM.key(k).arg(t).arg(ttl).invoke_async(&mut conn).await
            })
            .await?;
        match answer {
            1 => Ok((Seen::New, Some(RemoteClaim { key, token }))),
            2 => Ok((Seen::Done, None)),
            3 => Ok((Seen::InFlight, None)),
            _ => Err(SharedError::Unexpected("claim script")),
        }
    }

    /// The message is settled: later deliveries anywhere are duplicates
    /// for `done_ttl`.
    pub async fn commit(&self, claim: &RemoteClaim, done_ttl: Duration) -> Result<(), SharedError> {
        let (k, t, ttl) = (claim.key.clone(), claim.token.clone(), millis(done_ttl));
        self.call("commit", |mut conn| async move {
            COMMIT
                .key(k)
                .arg(t)
                .arg(ttl)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    /// Processing failed in a way that asks the platform to retry: let the
    /// redelivery through on any node.
    pub async fn release(&self, claim: &RemoteClaim) -> Result<(), SharedError> {
        let (k, t) = (claim.key.clone(), claim.token.clone());
        self.call("release", |mut conn| async move {
            RELEASE.key(k).arg(t).invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(drop)
    }
}
