//! Rate limits: `rate_limiting` in `security_policy.yaml`, for the scopes `global`,
//! `per_ip`, `per_user`, `per_tenant` and `per_route`.
//!
//! # Which scopes apply
//!
//! `global`, `per_route`, `per_tenant` and `per_user` apply to every verified message.
//! `per_ip` applies to the generic API and to traffic that fails verification, but not
//! to verified platform webhooks: their address is the platform's egress, shared by all
//! of its users, so a `per_ip` budget there would let one user silence the platform for
//! everyone (see `path::rate`, which decides, and [`RateLimiter::check_unverified`]).
//!
//! # Algorithm: a conservative sub-bucketed sliding window
//!
//! The promise is that no window of length `W`, wherever it starts, admits more than
//! `max_requests` (the issue allows 1% over; this admits 0% over). The usual
//! two-bucket sliding-window counter cannot promise that: it assumes the previous
//! window's requests were spread evenly, so a burst at the end of one window followed by
//! steady pressure admits almost `2 × max` in one real window (a test below shows it).
//! GCRA does not fit either: with a burst of `max` it admits `max` at once and then one
//! per `W / max`, about `2 × max` in a window.
//!
//! Each key keeps `BUCKETS + 1` counters, each `w = ceil(W / BUCKETS)` long. A request
//! at time `t` in bucket `k` is admitted only if the sum of buckets `k - BUCKETS ..= k` is
//! below `max`. That span reaches back to the start of bucket `k - BUCKETS`, which is at
//! or before `t - W` because `BUCKETS × w ≥ W`. So every request admitted in `[t - W, t]`
//! was counted when the last of them was admitted, and that one saw fewer than `max`:
//! at most `max` in any closed window of length `W`. The exactness is bought with
//! throughput, not memory: the counted span is up to `W + w`, so a client pushing
//! steadily gets at least `max × BUCKETS / (BUCKETS + 1)` per `W` (≥ 98.4% with 64
//! buckets). A sliding log would be exact without that loss but costs `max` timestamps
//! per key; this costs `(BUCKETS + 1) × 4` bytes whatever `max` is.
//!
//! # Memory and concurrency
//!
//! Keyed scopes live in moka caches with a capacity (`max_tracked_keys`, default
//! 100,000 per scope) and idle expiry one window long (an idle key's counters are all
//! zero by then, so expiry loses nothing), so rotating source addresses cannot exhaust
//! memory. IPv6 clients are keyed by their /64, since one subscriber gets a whole /64 and
//! would otherwise have 2^64 fresh keys to rotate through. User and tenant keys longer
//! than [`MAX_KEY_LEN`] are replaced by a keyed hash so a key costs bounded memory.
//! Under capacity pressure moka's TinyLFU admission keeps busy keys and drops one-off
//! ones; an evicted key restarts from zero, the price of bounded memory.
//!
//! Each key has its own small mutex, held for a few dozen instructions; a check locks the
//! scopes that apply in one fixed order (global, route, tenant, user, IP), decides them
//! all, and counts the request in every scope only if all admit it, so a refused request
//! uses up no one's budget. The only lock every request shares is the `global` scope's.
//!
//! # Reloads
//!
//! [`RateLimiter::reconfigure`] builds the limiter for a new config and shares the
//! counter stores of every scope whose window is unchanged (a changed `max_requests`
//! keeps its counters; a changed window starts fresh because bucket widths differ). The
//! result is meant to live in the atomically swapped policy set, so the request path takes
//! no lock that a reload holds.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;

use crate::config::yaml::HumanDuration;

/// Sub-buckets per window; the throughput given up is at most `1 / (BUCKETS + 1)`.
pub const BUCKETS: usize = 64;

/// Keys tracked per keyed scope when `max_tracked_keys` is not set.
pub const DEFAULT_MAX_TRACKED_KEYS: u64 = 100_000;

/// User and tenant keys longer than this are hashed so each key costs bounded memory.
pub const MAX_KEY_LEN: usize = 128;

/// Notice interval when no scope is configured.
const DEFAULT_NOTICE_INTERVAL: Duration = Duration::from_secs(60);

/// The `rate_limiting` section of `security_policy.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitingConfig {
    /// One budget shared by every request.
    #[serde(default)]
    pub global: Option<RateLimit>,
    /// A budget per client IP (IPv6 per /64), for the generic API and for
    /// requests that fail verification; not for verified platform webhooks.
    #[serde(default)]
    pub per_ip: Option<RateLimit>,
    /// A budget per authenticated user (JWT subject or `platform:user_id`).
    #[serde(default)]
    pub per_user: Option<RateLimit>,
    /// A budget per tenant.
    #[serde(default)]
    pub per_tenant: Option<RateLimit>,
    /// A budget per route, keyed by the route's configured path.
    #[serde(default)]
    pub per_route: BTreeMap<String, RateLimit>,
    /// Keys remembered per keyed scope before the least useful are evicted.
    #[serde(default)]
    pub max_tracked_keys: Option<u64>,
}

/// One limit: at most `max_requests` in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(from = "RawRateLimit")]
pub struct RateLimit {
    /// The window length, like `60s`; between 1ms and a year.
    pub window: HumanDuration,
    /// Requests admitted per window; at least 1.
    pub max_requests: u32,
}

/// The parsed form; each field validates itself so a bad value is reported at its own
/// mapping rather than at the enclosing one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    window: WindowLen,
    max_requests: MaxRequests,
}

impl From<RawRateLimit> for RateLimit {
    fn from(raw: RawRateLimit) -> Self {
        RateLimit {
            window: raw.window.0,
            max_requests: raw.max_requests.0,
        }
    }
}

struct WindowLen(HumanDuration);

impl<'de> Deserialize<'de> for WindowLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = HumanDuration::deserialize(d)?;
        if w.0 < Duration::from_millis(1) {
            return Err(D::Error::custom(format!(
                "window must be at least 1ms, got {}",
                humantime::format_duration(w.0)
            )));
        }
        if w.0 > Duration::from_secs(366 * 86_400) {
            return Err(D::Error::custom("window must be at most a year"));
        }
        Ok(WindowLen(w))
    }
}

struct MaxRequests(u32);

impl<'de> Deserialize<'de> for MaxRequests {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(D::Error::custom(
                "max_requests must be at least 1 (remove the scope to disable it)",
            )),
            n => Ok(MaxRequests(n)),
        }
    }
}

/// What a request is counted under.
#[derive(Debug, Clone, Copy)]
pub struct RateKeys<'a> {
    /// The client address (after trusted-proxy resolution), when `per_ip` applies: not
    /// for verified platform webhooks, whose address is the platform's egress (see
    /// `path::rate`).
    pub ip: Option<IpAddr>,
    /// The authenticated user, if known.
    pub user: Option<&'a str>,
    /// The tenant, if known.
    pub tenant: Option<&'a str>,
    /// The route's configured path.
    pub route: &'a str,
}

/// One limit that applies to a request: its scope, the key it counts under
/// (`global`, `route:<path>`, `tenant:<id>`, `user:<key>`, `ip:<address>`),
/// and its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicable {
    /// `global`, `per_route`, `per_tenant`, `per_user` or `per_ip`.
    pub scope: &'static str,
    /// What is counted, scope included.
    pub key: String,
    /// Requests admitted per window.
    pub limit: u64,
    /// The window.
    pub window: Duration,
}

impl Applicable {
    fn of(scope: &Scope, key: String) -> Self {
        Self {
            scope: scope.name,
            key,
            limit: scope.limit,
            window: scope.window,
        }
    }
}

/// A refusal: which scope ran out and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// `global`, `per_ip`, `per_user`, `per_tenant` or `per_route`; a bounded metric label.
    pub scope: &'static str,
    /// How long until this request would be admitted, if nothing else arrives.
    pub retry_after: Duration,
}

impl Limited {
    /// `retry_after` in whole seconds, rounded up and at least 1, for a `Retry-After` header.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limited by {} (retry after {}s)",
            self.scope,
            self.retry_after_secs()
        )
    }
}

impl std::error::Error for Limited {}

/// The counters of one key: a ring of `BUCKETS + 1` sub-window counts.
#[derive(Debug)]
struct Window {
    /// Index (since the limiter's epoch) of the newest bucket.
    head: u64,
    /// Sum of `counts`.
    total: u64,
    counts: [u32; BUCKETS + 1],
}

const RING: u64 = BUCKETS as u64 + 1;

impl Window {
    fn new() -> Self {
        Window {
            head: 0,
            total: 0,
            counts: [0; BUCKETS + 1],
        }
    }

    fn slot(i: u64) -> usize {
        (i % RING) as usize
    }

    /// Moves the ring forward to bucket `k`, dropping buckets older than `k - BUCKETS`.
    /// Time never runs backwards here: a caller whose `now` is older than another's that
    /// already got the lock is counted in the newer bucket, which keeps the proof intact.
    fn advance(&mut self, k: u64) {
        if k <= self.head {
            return;
        }
        if k - self.head >= RING {
            self.counts = [0; BUCKETS + 1];
            self.total = 0;
        } else {
            for i in self.head + 1..=k {
                let s = Self::slot(i);
                self.total -= u64::from(self.counts[s]);
                self.counts[s] = 0;
            }
        }
        self.head = k;
    }

    fn record(&mut self) {
        let s = Self::slot(self.head);
        self.counts[s] = self.counts[s].saturating_add(1);
        self.total += 1;
    }

    /// Time from `t_ns` until enough old buckets have dropped out for one more request.
    fn retry_after(&self, limit: u64, width_ns: u64, t_ns: u64) -> Duration {
        // Buckets before the epoch never held anything, so start at 0.
        let oldest = self.head.saturating_sub(BUCKETS as u64);
        let mut remaining = self.total;
        let mut at = self.head + 1;
        for i in oldest..=self.head {
            remaining -= u64::from(self.counts[Self::slot(i)]);
            at = i + RING;
            if remaining < limit {
                break;
            }
        }
        // Bucket `i` leaves the counted span when bucket `i + RING` begins.
        let when = at.saturating_mul(width_ns);
        Duration::from_nanos(when.saturating_sub(t_ns).max(1))
    }
}

fn lock(m: &Mutex<Window>) -> MutexGuard<'_, Window> {
    // A panic cannot happen while the lock is held, and a window is valid at every step.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where one scope keeps its windows.
enum Store {
    One(Box<Mutex<Window>>),
    Ip(Cache<IpAddr, Arc<Mutex<Window>>>),
    Name(Cache<String, Arc<Mutex<Window>>>),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Store::One(_) => f.write_str("One"),
            Store::Ip(c) => write!(f, "Ip({} keys)", c.entry_count()),
            Store::Name(c) => write!(f, "Name({} keys)", c.entry_count()),
        }
    }
}

impl Store {
    fn keyed_cache<K>(
        window: Duration,
        width_ns: u64,
        capacity: u64,
    ) -> Cache<K, Arc<Mutex<Window>>>
    where
        K: Hash + Eq + Send + Sync + 'static,
    {
        Cache::builder()
            .max_capacity(capacity)
            .time_to_idle(window + Duration::from_nanos(width_ns))
            .build()
    }

    fn entries(&self) -> u64 {
        match self {
            Store::One(_) => 1,
            Store::Ip(c) => c.entry_count(),
            Store::Name(c) => c.entry_count(),
        }
    }
}

/// A compiled scope: its limit and a store shared across reloads while the window holds.
#[derive(Debug, Clone)]
struct Scope {
    name: &'static str,
    limit: u64,
    window: Duration,
    width_ns: u64,
    capacity: u64,
    store: Arc<Store>,
}

enum KindOf {
    One,
    Ip,
    Name,
}

impl Scope {
    fn build(
        name: &'static str,
        cfg: &RateLimit,
        kind: KindOf,
        capacity: u64,
        old: Option<&Scope>,
    ) -> Scope {
        let window = cfg.window.0;
        let width_ns = u64::try_from(window.as_nanos().div_ceil(BUCKETS as u128))
            .unwrap_or(u64::MAX)
            .max(1);
        let store = match old {
            Some(o) if o.window == window && o.capacity == capacity => o.store.clone(),
            _ => Arc::new(match kind {
                KindOf::One => Store::One(Box::new(Mutex::new(Window::new()))),
                KindOf::Ip => Store::Ip(Store::keyed_cache(window, width_ns, capacity)),
                KindOf::Name => Store::Name(Store::keyed_cache(window, width_ns, capacity)),
            }),
        };
        Scope {
            name,
            limit: u64::from(cfg.max_requests),
            window,
            width_ns,
            capacity,
            store,
        }
    }
}

/// How often a limited key is told to slow down: the longest configured window.
fn notice_interval(config: &RateLimitingConfig) -> Duration {
    [
        &config.global,
        &config.per_ip,
        &config.per_user,
        &config.per_tenant,
    ]
    .into_iter()
    .flatten()
    .chain(config.per_route.values())
    .map(|c| c.window.0)
    .max()
    .unwrap_or(DEFAULT_NOTICE_INTERVAL)
}

/// The notice cache: the old limiter's while the interval holds, else a new one.
fn notices(
    old: Option<&RateLimiter>,
    interval: Duration,
    capacity: u64,
) -> Arc<Cache<String, Arc<AtomicU64>>> {
    match old {
        Some(o) if o.notice_interval == interval => o.notices.clone(),
        _ => Arc::new(
            Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(interval)
                .build(),
        ),
    }
}

/// A window borrowed from a scope store or held by its cache entry.
enum WinRef<'a> {
    Borrowed(&'a Mutex<Window>),
    Owned(Arc<Mutex<Window>>),
}

impl WinRef<'_> {
    fn get(&self) -> &Mutex<Window> {
        match self {
            WinRef::Borrowed(m) => m,
            WinRef::Owned(a) => a,
        }
    }
}

/// Enforces the configured scopes; cheap to share between threads.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    epoch: Instant,
    global: Option<Scope>,
    per_ip: Option<Scope>,
    per_user: Option<Scope>,
    per_tenant: Option<Scope>,
    per_route: HashMap<String, Scope>,
    hasher: RandomState,
    notice_interval: Duration,
    notices: Arc<Cache<String, Arc<AtomicU64>>>,
}

impl RateLimiter {
    /// A limiter with fresh counters for `config`.
    pub fn new(config: &RateLimitingConfig) -> RateLimiter {
        Self::build(config, None)
    }

    /// The limiter for a reloaded `config`, keeping the counters of every scope whose window
    /// (and key capacity) is unchanged; `self` keeps working for requests in flight.
    pub fn reconfigure(&self, config: &RateLimitingConfig) -> RateLimiter {
        Self::build(config, Some(self))
    }

    fn build(config: &RateLimitingConfig, old: Option<&RateLimiter>) -> RateLimiter {
        let cap = config
            .max_tracked_keys
            .unwrap_or(DEFAULT_MAX_TRACKED_KEYS)
            .max(1);
        let scope = |name, cfg: &Option<RateLimit>, kind, capacity, prev: Option<&Scope>| {
            cfg.as_ref()
                .map(|c| Scope::build(name, c, kind, capacity, prev))
        };
        let per_route = config
            .per_route
            .iter()
            .map(|(route, c)| {
                let prev = old.and_then(|o| o.per_route.get(route));
                (
                    route.clone(),
                    Scope::build("per_route", c, KindOf::One, 1, prev),
                )
            })
            .collect();
        let notice_interval = notice_interval(config);
        RateLimiter {
            epoch: old.map_or_else(Instant::now, |o| o.epoch),
            global: scope(
                "global",
                &config.global,
                KindOf::One,
                1,
                old.and_then(|o| o.global.as_ref()),
            ),
            per_ip: scope(
                "per_ip",
                &config.per_ip,
                KindOf::Ip,
                cap,
                old.and_then(|o| o.per_ip.as_ref()),
            ),
            per_user: scope(
                "per_user",
                &config.per_user,
                KindOf::Name,
                cap,
                old.and_then(|o| o.per_user.as_ref()),
            ),
            per_tenant: scope(
                "per_tenant",
                &config.per_tenant,
                KindOf::Name,
                cap,
                old.and_then(|o| o.per_tenant.as_ref()),
            ),
            per_route,
            hasher: old.map_or_else(RandomState::new, |o| o.hasher.clone()),
            notice_interval,
            notices: notices(old, notice_interval, cap),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Bounds attacker-chosen key text: long keys become a per-process keyed hash.
    fn name_key<'k>(&self, raw: &'k str) -> std::borrow::Cow<'k, str> {
        if raw.len() <= MAX_KEY_LEN {
            std::borrow::Cow::Borrowed(raw)
        } else {
            let mut h = self.hasher.build_hasher();
            raw.hash(&mut h);
            let a = h.finish();
            raw.len().hash(&mut h);
            std::borrow::Cow::Owned(format!("#{a:016x}{:016x}", h.finish()))
        }
    }

    fn named<'s>(&self, scope: &'s Scope, raw: &str) -> WinRef<'s> {
        match &*scope.store {
            Store::Name(c) => {
                let key = self.name_key(raw);
                WinRef::Owned(
                    c.entry_by_ref(key.as_ref())
                        .or_insert_with(|| Arc::new(Mutex::new(Window::new())))
                        .into_value(),
                )
            }
            Store::One(m) => WinRef::Borrowed(m),
            Store::Ip(_) => WinRef::Owned(Arc::new(Mutex::new(Window::new()))),
        }
    }

    fn window_for<'s>(scope: &'s Scope, ip: Option<IpAddr>) -> WinRef<'s> {
        match (&*scope.store, ip) {
            (Store::One(m), _) => WinRef::Borrowed(m),
            (Store::Ip(c), Some(ip)) => {
                WinRef::Owned(c.get_with(ip_key(ip), || Arc::new(Mutex::new(Window::new()))))
            }
            // Unreachable by construction; an unshared window admits as if the key were new.
            (Store::Ip(_) | Store::Name(_), _) => {
                WinRef::Owned(Arc::new(Mutex::new(Window::new())))
            }
        }
    }

    /// Admits the request and counts it in every scope, or refuses it and counts nothing.
    /// When several scopes refuse, the one with the longest `retry_after` is reported.
    pub fn check(&self, keys: &RateKeys<'_>, now: Instant) -> Result<(), Limited> {
        let t = self.nanos(now);
        // Fixed order (global, route, tenant, user, ip) so concurrent checks never deadlock.
        let mut refs: [Option<(&Scope, WinRef<'_>)>; 5] = [const { None }; 5];
        if let Some(s) = &self.global {
            refs[0] = Some((s, Self::window_for(s, None)));
        }
        if let Some(s) = self.per_route.get(keys.route) {
            refs[1] = Some((s, Self::window_for(s, None)));
        }
        if let (Some(s), Some(tenant)) = (&self.per_tenant, keys.tenant) {
            refs[2] = Some((s, self.named(s, tenant)));
        }
        if let (Some(s), Some(user)) = (&self.per_user, keys.user) {
            refs[3] = Some((s, self.named(s, user)));
        }
        if let (Some(s), Some(ip)) = (&self.per_ip, keys.ip) {
            refs[4] = Some((s, Self::window_for(s, Some(ip))));
        }

        let mut guards: [Option<(&Scope, MutexGuard<'_, Window>)>; 5] = [const { None }; 5];
        let mut worst: Option<Limited> = None;
        for (slot, r) in guards.iter_mut().zip(refs.iter()) {
            let Some((scope, win)) = r else { continue };
            let mut g = lock(win.get());
            g.advance(t / scope.width_ns);
            if g.total >= scope.limit {
                let retry_after = g.retry_after(scope.limit, scope.width_ns, t);
                if worst.is_none_or(|w| retry_after > w.retry_after) {
                    worst = Some(Limited {
                        scope: scope.name,
                        retry_after,
                    });
                }
            }
            *slot = Some((scope, g));
        }
        if let Some(l) = worst {
            return Err(l);
        }
        for (_, g) in guards.iter_mut().flatten() {
            g.record();
        }
        Ok(())
    }

    /// The limits that apply to a request with `keys`, in the order
    /// [`RateLimiter::check`] takes them, for the shared tier (which keeps
    /// the counters in Redis instead of in this limiter's windows).
    pub fn applicable(&self, keys: &RateKeys<'_>) -> Vec<Applicable> {
        let mut out = Vec::with_capacity(5);
        if let Some(s) = &self.global {
            out.push(Applicable::of(s, "global".into()));
        }
        if let Some(s) = self.per_route.get(keys.route) {
            out.push(Applicable::of(s, format!("route:{}", keys.route)));
        }
        if let (Some(s), Some(tenant)) = (&self.per_tenant, keys.tenant) {
            out.push(Applicable::of(s, format!("tenant:{tenant}")));
        }
        if let (Some(s), Some(user)) = (&self.per_user, keys.user) {
            out.push(Applicable::of(s, format!("user:{user}")));
        }
        if let (Some(s), Some(ip)) = (&self.per_ip, keys.ip) {
            out.push(Applicable::of(s, format!("ip:{}", ip_key(ip))));
        }
        out
    }

    /// The limit a request from `ip` that failed verification spends (see
    /// [`RateLimiter::check_unverified`]), for the shared tier.
    pub fn applicable_unverified(&self, ip: IpAddr) -> Option<Applicable> {
        let s = self.per_ip.as_ref()?;
        Some(Applicable::of(s, format!("ip:{}", ip_key(ip))))
    }

    /// Counts one request from `ip` that failed verification (a bad signature or token)
    /// in the `per_ip` scope only, or refuses it when that budget is spent. Failures never
    /// count toward `global`, `per_route`, `per_tenant` or `per_user`, so forged traffic
    /// cannot use up the budget of verified senders.
    pub fn check_unverified(&self, ip: IpAddr, now: Instant) -> Result<(), Limited> {
        let Some(scope) = &self.per_ip else {
            return Ok(());
        };
        let t = self.nanos(now);
        let win = Self::window_for(scope, Some(ip));
        let mut g = lock(win.get());
        g.advance(t / scope.width_ns);
        if g.total >= scope.limit {
            return Err(Limited {
                scope: scope.name,
                retry_after: g.retry_after(scope.limit, scope.width_ns, t),
            });
        }
        g.record();
        Ok(())
    }

    /// Whether to send the "slow down" notice to `key` now: true at most once per
    /// notice interval (the longest configured window) per key.
    pub fn should_notify(&self, key: &str, now: Instant) -> bool {
        let t = self.nanos(now);
        let interval = u64::try_from(self.notice_interval.as_nanos()).unwrap_or(u64::MAX);
        let key = self.name_key(key);
        // 0 means "never notified"; otherwise the stored value is the time + 1.
        let cell = self
            .notices
            .entry_by_ref(key.as_ref())
            .or_insert_with(|| Arc::new(AtomicU64::new(0)))
            .into_value();
        let mut last = cell.load(Ordering::Acquire);
        loop {
            if last != 0 && t < (last - 1).saturating_add(interval) {
                return false;
            }
            match cell.compare_exchange_weak(
                last,
                t.saturating_add(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => last = seen,
            }
        }
    }

    /// How often [`RateLimiter::should_notify`] lets a notice through per key.
    pub fn notice_interval(&self) -> Duration {
        self.notice_interval
    }

    /// Approximate number of tracked keys across scopes, for a gauge.
    pub fn tracked_keys(&self) -> u64 {
        [&self.global, &self.per_ip, &self.per_user, &self.per_tenant]
            .into_iter()
            .flatten()
            .chain(self.per_route.values())
            .map(|s| s.store.entries())
            .sum()
    }
}

/// The per-IP key: IPv4 as is, IPv6 by its /64 (one subscriber's allocation).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;
