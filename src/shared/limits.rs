//! Rate limits shared by every node: N nodes together admit what one node
//! would.
//!
//! Every limit that applies to a request (global, route, tenant, user, IP)
//! is checked and consumed by one Lua script (`limits.lua`), all or nothing,
//! on Redis's clock, in one round trip. Key per limited key and window:
//! `{prefix}rate:{scope key}:{window ms}` (a hash of bucket index → units,
//! expiring a window after its last write), so a changed window starts
//! fresh, as the in-memory limiter does.
//!
//! Two things keep round trips off the hot path, both in moka:
//! - **Blocked until.** A refused key is refused here, without Redis, until
//!   the time the script said it frees up. Abusive traffic costs nothing.
//! - **Leases.** For large budgets (global, route, tenant) a node takes
//!   `limit / 100 / nodes` units at once (when that is at least 2) and
//!   spends them locally, for at most one window; what is left then is
//!   dropped. At any moment the units leased but not spent, on all nodes
//!   together, are at most 1 % of the limit, and that bounds the error both
//!   ways: a window can admit up to 1 % less (units held, not spent) or up
//!   to 1 % more (units counted in an earlier window, spent in this one).
//!
//! Without leases the promise is the in-memory limiter's: no window admits
//! more than `max_requests` (time is Redis's, so node clocks do not matter).

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use redis::Script;

use super::{key_text, Shared, SharedError};
use crate::policy::rate::{Applicable, Limited, BUCKETS};

static LIMITS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("limits.lua")));

/// Scopes whose budgets are big enough to lease.
const LEASED_SCOPES: [&str; 3] = ["global", "per_route", "per_tenant"];

/// Units a node may hold for one key, and until when.
#[derive(Debug, Default)]
struct Lease {
    units: u64,
    until: Option<Instant>,
}

/// This node's first level in front of the script.
pub struct LocalLevel {
    blocked: Cache<String, Instant>,
    leases: Cache<String, Arc<Mutex<Lease>>>,
}

impl Default for LocalLevel {
    fn default() -> Self {
        Self {
            blocked: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            leases: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }
}

fn lock(m: &Mutex<Lease>) -> std::sync::MutexGuard<'_, Lease> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One limit as the script sees it.
struct Entry<'a> {
    limit: &'a Applicable,
    redis_key: String,
    want: u64,
    lease: Option<Arc<Mutex<Lease>>>,
}

/// Lease size for `limit` with `nodes` nodes (1 = no lease).
pub fn lease_size(limit: &Applicable, nodes: u32) -> u64 {
    if nodes == 0 || !LEASED_SCOPES.contains(&limit.scope) {
        return 1;
    }
    let size = limit.limit / 100 / u64::from(nodes);
    if size >= 2 {
        size
    } else {
        1
    }
}

fn width_us(window: Duration) -> u64 {
    let us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
    us.div_ceil(BUCKETS as u64).max(1)
}

impl Shared {
    /// Checks and consumes every limit in `limits` across all nodes.
    /// `Ok(Err(_))` is a refusal; `Err(_)`: Redis failed, `on_error` decides.
    pub async fn limit(&self, limits: &[Applicable]) -> Result<Result<(), Limited>, SharedError> {
        let now = Instant::now();
        let local = &self.local_limits;
        for l in limits {
            if let Some(until) = local.blocked.get(&l.key).filter(|u| *u > now) {
                return Ok(Err(Limited {
                    scope: l.scope,
                    retry_after: until - now,
                }));
            }
        }
        let nodes = self.nodes();
        let mut taken = Vec::new();
        let mut entries = Vec::new();
        for l in limits {
            let want = lease_size(l, nodes);
            let lease = (want > 1).then(|| {
                local
                    .leases
                    .get_with_by_ref(&l.key, || Arc::new(Mutex::new(Lease::default())))
            });
            if let Some(lease) = &lease {
                let mut held = lock(lease);
                if held.units > 0 && held.until.is_some_and(|u| u > now) {
                    held.units -= 1;
                    drop(held);
                    taken.push(lease.clone());
                    continue;
                }
            }
            let redis_key = self.key(
                "rate",
                &format!("{}:{}", key_text(&l.key), l.window.as_millis()),
            );
            entries.push(Entry {
                limit: l,
                redis_key,
                want,
                lease,
            });
        }
        if entries.is_empty() {
            return Ok(Ok(()));
        }
        let answer = self.run_limits(&entries).await;
        let give_back = || {
            for lease in &taken {
                lock(lease).units += 1;
            }
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                give_back();
                return Err(e);
            }
        };
        match parse(&answer, entries.len())? {
            Verdict::Refused { index, retry } => {
                give_back();
                let l = entries[index].limit;
                local.blocked.insert(l.key.clone(), now + retry);
                Ok(Err(Limited {
                    scope: l.scope,
                    retry_after: retry,
                }))
            }
            Verdict::Admitted(grants) => {
                for (entry, granted) in entries.iter().zip(grants) {
                    if let Some(lease) = &entry.lease {
                        let mut held = lock(lease);
                        held.units = granted.saturating_sub(1);
                        held.until = Some(now + entry.limit.window);
                    }
                }
                Ok(Ok(()))
            }
        }
    }

    async fn run_limits(&self, entries: &[Entry<'_>]) -> Result<Vec<i64>, SharedError> {
        let mut invocation = LIMITS.prepare_invoke();
        invocation.arg(BUCKETS);
        for e in entries {
            invocation
                .key(&e.redis_key)
                .arg(e.limit.limit)
                .arg(width_us(e.limit.window))
                .arg(e.want);
        }
        let invocation = &invocation;
        self.call("rate", |mut conn| async move {
            invocation.invoke_async::<Vec<i64>>(&mut conn).await
        })
        .await
    }
}

/// What the script decided.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Nothing counted; entry `index` frees up last, after `retry`.
    Refused { index: usize, retry: Duration },
    /// Every entry counted: units granted to each.
    Admitted(Vec<u64>),
}

fn parse(answer: &[i64], entries: usize) -> Result<Verdict, SharedError> {
    let bad = SharedError::Unexpected("rate script");
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    match answer {
        [0, index, retry] => {
            let index = usize::try_from(*index)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .filter(|i| *i < entries)
                .ok_or(bad)?;
            Ok(Verdict::Refused {
                index,
                retry: micros(*retry).max(Duration::from_millis(1)),
            })
        }
        [1, rest @ ..] if rest.len() == entries => Ok(Verdict::Admitted(
            rest.iter()
                .map(|g| u64::try_from(*g).unwrap_or(0))
                .collect(),
        )),
        _ => Err(bad),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(scope: &'static str, n: u64) -> Applicable {
        Applicable {
            scope,
            key: format!("{scope}:k"),
            limit: n,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn leases_only_for_large_shared_budgets() {
        assert_eq!(lease_size(&limit("global", 100_000), 4), 250);
        assert_eq!(lease_size(&limit("per_tenant", 10_000), 10), 10);
        // 1 % of 90 is under two units: no lease.
        assert_eq!(lease_size(&limit("global", 90), 1), 1);
        // A user's or address's budget is never leased.
        assert_eq!(lease_size(&limit("per_user", 100_000), 1), 1);
        // Until the first probe says how many nodes there are: no lease.
        assert_eq!(lease_size(&limit("global", 100_000), 0), 1);
    }

    #[test]
    fn script_answers_are_checked() {
        assert_eq!(
            parse(&[0, 2, 1_500_000], 2).unwrap(),
            Verdict::Refused {
                index: 1,
                retry: Duration::from_millis(1500)
            }
        );
        assert_eq!(parse(&[1, 1, 5], 2).unwrap(), Verdict::Admitted(vec![1, 5]));
        assert!(parse(&[0, 3, 1], 2).is_err());
        assert!(parse(&[0, 0, 1], 2).is_err());
        assert!(parse(&[1, 1], 2).is_err());
        assert!(parse(&[], 1).is_err());
    }

    #[test]
    fn bucket_width_is_a_64th_of_the_window() {
        assert_eq!(width_us(Duration::from_secs(64)), 1_000_000);
        assert_eq!(width_us(Duration::from_millis(1)), 16);
        assert_eq!(width_us(Duration::from_nanos(1)), 1);
    }
}
