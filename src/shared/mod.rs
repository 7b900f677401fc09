//! The shared tier: state that every edge node must agree on, in Redis or
//! Valkey (`shared:` in `moltgate.yaml`).
//!
//! A platform delivers each webhook to whichever node it reaches, so rate
//! counters, dedupe claims, conversation context and pending confirmations
//! kept per node would let a user have N times the limit, a redelivery reach
//! the AI twice, and a conversation restart on every node change. This
//! module is the one place that talks to Redis; each kind of state has a
//! file here with its key layout and its Lua script, and the path's stages
//! decide what to do when Redis fails (`on_error`).
//!
//! [`Shared`] wraps redis-rs's `ConnectionManager` (one multiplexed
//! connection, reconnected with backoff in the background) with:
//! - a per-command timeout: past `shared.redis.timeout` a command counts as
//!   failed, whatever Redis does with it later;
//! - a [`breaker::Breaker`]: one failure opens it and commands are skipped
//!   until the background probe (every [`PROBE_INTERVAL`]) gets an answer;
//! - metrics: `moltgate_shared_up`, `moltgate_shared_ops_total{op,result}`
//!   and `moltgate_shared_seconds{op}`.
//!
//! The probe is also the node's heartbeat: it keeps this node's id in a
//! sorted set, so every node knows how many nodes share the limits (the
//! size of rate-limit leases depends on it, see [`limits`]).

pub mod breaker;
pub mod claims;
pub mod confirmations;
pub mod conversations;
pub mod limits;
pub mod tokens;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use crate::config::{OnError, SharedConfig};
use crate::observe::Metrics;
use breaker::Breaker;

/// How often the probe runs (and so how soon a recovered Redis is used).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A node missing from this many probes is no longer counted.
const NODE_EXPIRY_PROBES: u32 = 6;

/// Why a command did not succeed. Never carries key contents.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The breaker is open: Redis failed recently and no probe has
    /// succeeded since.
    #[error("shared state skipped: Redis is down (circuit open)")]
    Open,
    /// No answer within `shared.redis.timeout`.
    #[error("shared state command timed out after {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("shared state command failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the script never returns.
    #[error("shared state answer not understood: {0}")]
    Unexpected(&'static str),
}

/// Errors creating the client (at start: a config `moltgate check` accepted
/// cannot fail here except for TLS setup).
#[derive(Debug, thiserror::Error)]
#[error("shared.redis.url '{url}': {source}")]
pub struct ConnectError {
    url: String,
    source: redis::RedisError,
}

/// This node's handle on the shared tier. Cheap to share behind an `Arc`.
pub struct Shared {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    on_error: OnError,
    claim_ttl: Duration,
    breaker: Breaker,
    metrics: Metrics,
    node_id: String,
    nodes: AtomicU32,
    url: String,
    local_limits: limits::LocalLevel,
    deferred: claims::Deferred,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.url)
            .field("on_error", &self.on_error)
            .field("up", &self.is_up())
            .finish()
    }
}

static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("heartbeat.lua")));

impl Shared {
    /// A client for `cfg`. Connects lazily (a Redis that is down at start
    /// is the same as one that goes down later), so this needs a Tokio
    /// runtime but no reachable Redis.
    pub fn connect(cfg: &SharedConfig, metrics: Metrics) -> Result<Self, ConnectError> {
        let url = cfg.redis.url.redacted();
        let fail = |source| ConnectError {
            url: url.clone(),
            source,
        };
        let client = redis::Client::open(cfg.redis.url.expose()).map_err(fail)?;
        let timeout = cfg.redis.timeout.0;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            // A stopped Redis still completes TCP handshakes (the kernel
            // does), so the protocol handshake needs its own bound.
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(client, manager).map_err(fail)?;
        metrics.shared_up.set(1);
        tracing::info!(
            url = %url,
            timeout_ms = timeout.as_millis() as u64,
            on_error = cfg.on_error.as_str(),
            "state shared with other nodes through Redis"
        );
        Ok(Self {
            conn,
            prefix: cfg.key_prefix.0.clone(),
            timeout,
            on_error: cfg.on_error,
            claim_ttl: cfg.claim_ttl.0,
            breaker: Breaker::new(),
            metrics,
            node_id: uuid::Uuid::new_v4().simple().to_string(),
            nodes: AtomicU32::new(0),
            url,
            local_limits: limits::LocalLevel::default(),
            deferred: claims::Deferred::default(),
        })
    }

    /// What limits and dedupe do while Redis fails.
    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// How long an unsettled dedupe claim holds.
    pub fn claim_ttl(&self) -> Duration {
        self.claim_ttl
    }

    /// Whether Redis answered the last probe and no command failed since.
    pub fn is_up(&self) -> bool {
        self.breaker.allows()
    }

    /// Live nodes sharing this Redis (0 until the first probe answered).
    pub fn nodes(&self) -> u32 {
        self.nodes.load(Ordering::Relaxed)
    }

    /// The URL with any password hidden, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `key_prefix` + `kind` + `:` + `id`.
    pub fn key(&self, kind: &str, id: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + 1 + id.len());
        k.push_str(&self.prefix);
        k.push_str(kind);
        k.push(':');
        k.push_str(id);
        k
    }

    /// Runs one command (or script, or pipeline) as operation `op`: skipped
    /// while the breaker is open, bounded by the timeout, counted. A
    /// connection found dead (Redis restarted since the last command) is
    /// replaced and the work sent once more, within the same timeout.
    pub async fn call<T, F, Fut>(&self, op: &'static str, work: F) -> Result<T, SharedError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allows() {
            self.count(op, "skipped", None);
            return Err(SharedError::Open);
        }
        let started = Instant::now();
        let deadline = started + self.timeout;
        let result = match self.bounded(deadline, work(self.conn.clone())).await {
            Err(SharedError::Redis(e)) if e.is_connection_dropped() || e.is_io_error() => {
                self.bounded(deadline, work(self.conn.clone())).await
            }
            other => other,
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(SharedError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        self.count(op, label, Some(started.elapsed()));
        if let Err(e) = &result {
            self.failed(op, e);
        }
        result
    }

    /// `work` within the timeout (redis-rs's own response timeout, set to
    /// the same value, may fire first: both are a timeout).
    async fn bounded<T>(
        &self,
        deadline: Instant,
        work: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(SharedError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(SharedError::Redis(e)),
            Err(_) => Err(SharedError::Timeout(self.timeout)),
        }
    }

    fn count(&self, op: &'static str, result: &'static str, took: Option<Duration>) {
        self.metrics
            .shared_ops
            .with_label_values(&[op, result])
            .inc();
        if let Some(took) = took {
            self.metrics
                .shared_seconds
                .with_label_values(&[op])
                .observe(took.as_secs_f64());
        }
    }

    fn failed(&self, op: &'static str, error: &SharedError) {
        if self.breaker.trip() {
            self.metrics.shared_up.set(0);
            tracing::warn!(
                op,
                error = %error,
                url = %self.url,
                on_error = self.on_error.as_str(),
                "shared state unavailable; skipping Redis until it answers again"
            );
        }
    }

    /// One probe: this node's heartbeat, which also tells how many nodes
    /// are alive. Closes the breaker when Redis answers.
    pub async fn probe(&self) -> Result<u32, SharedError> {
        let key = self.key("nodes", "live");
        let expiry = PROBE_INTERVAL * NODE_EXPIRY_PROBES;
        let expiry_ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX);
        let node = self.node_id.clone();
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let result = self
            .bounded(started + self.timeout, async move {
                HEARTBEAT
                    .key(key)
                    .arg(node)
                    .arg(expiry_ms)
                    .invoke_async::<u32>(&mut conn)
                    .await
            })
            .await;
        let label = if result.is_ok() { "ok" } else { "error" };
        self.count("probe", label, Some(started.elapsed()));
        match &result {
            Ok(n) => {
                self.nodes.store(*n, Ordering::Relaxed);
                if self.breaker.close() {
                    tracing::info!(url = %self.url, nodes = n, "shared state available again");
                }
                self.metrics.shared_up.set(1);
                self.settle_deferred().await;
            }
            Err(e) => self.failed("probe", e),
        }
        result
    }

    /// Probes forever, every [`PROBE_INTERVAL`]. Spawned once at start.
    pub async fn run_probes(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = self.probe().await;
        }
    }
}

/// Keys that requests choose (user ids, message ids, conversation keys) are
/// used as they are up to this length, and by SHA-256 beyond it, so a key
/// costs Redis bounded memory whatever a sender picks.
pub const MAX_KEY_TEXT: usize = 200;

/// `text` as a key part: itself, or `#` + its SHA-256 when long. Stable
/// across nodes (unlike the per-process hashes of the in-memory tables).
pub fn key_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_KEY_TEXT {
        return std::borrow::Cow::Borrowed(text);
    }
    use sha2::{Digest, Sha256};
    std::borrow::Cow::Owned(format!("#{}", hex::encode(Sha256::digest(text.as_bytes()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_key_text_is_hashed_the_same_everywhere() {
        assert_eq!(key_text("telegram:42"), "telegram:42");
        let long = "x".repeat(MAX_KEY_TEXT + 1);
        let a = key_text(&long);
        assert_eq!(a.len(), 65);
        assert_eq!(a, key_text(&long));
        assert_ne!(a, key_text(&"y".repeat(MAX_KEY_TEXT + 1)));
    }
}
