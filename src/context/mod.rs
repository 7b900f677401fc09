//! Conversation context: the last turns and state of each conversation, kept
//! in memory so the AI cluster sees what was said before.
//!
//! It exists because platforms deliver one message at a time and the AI
//! cluster is stateless per call: the gateway attaches `Envelope.context`
//! (turns, state, attributes) to every message and records the exchange when
//! the reply comes back. A user who switches platforms keeps their
//! conversation when `policies/identities.yaml` links the accounts
//! ([`conversation_key`]).
//!
//! The store is a `moka` cache, bounded three ways:
//! - **Bytes**: every entry is weighed by an estimate of its heap size
//!   ([`ContextLimits::max_bytes`]; by default `max_conversations` ×
//!   [`bytes_per_conversation`]`(turns)`, which holds `turns` turns of about
//!   80 bytes each). When full, the least recently used conversation goes
//!   (LRU, so a new conversation is always admitted).
//! - **Lifetime**: a conversation is dropped `ttl` after it started, however
//!   busy it is (the config's `context.ttl`).
//! - **Idleness**: and `idle` after its last exchange (default
//!   `min(ttl, 2h)`), so the memory of abandoned chats is returned long
//!   before `ttl`.
//!
//! Turns are stored as the gateway forwarded them (already DLP-masked); a
//! turn longer than [`MAX_TURN_BYTES`] is cut at a character boundary. State
//! is bounded to [`MAX_STATE_KEYS`] keys with values of at most
//! [`MAX_STATE_VALUE_BYTES`]; extras are dropped and counted. Every update
//! of one conversation is atomic (moka `and_compute_with`), so concurrent
//! messages of one conversation never lose a turn.
//!
//! Metrics: `moltgate_context_entries` and
//! `moltgate_context_events_total{event=hit|miss|evicted|expired|state_dropped}`.

pub mod confirm;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::policy::{EvictionPolicy, Expiry};
use moka::sync::Cache;

use crate::config::ContextConfig;
use crate::observe::Metrics;
use crate::platform::{ChatType, PlatformMessage};
use crate::proto::v1::{Context, Turn};

/// Longest turn text kept, in bytes; longer turns are cut.
pub const MAX_TURN_BYTES: usize = 8 * 1024;
/// Most state (and attribute) keys per conversation.
pub const MAX_STATE_KEYS: usize = 64;
/// Longest state key, in bytes.
pub const MAX_STATE_KEY_BYTES: usize = 64;
/// Longest state value, in bytes.
pub const MAX_STATE_VALUE_BYTES: usize = 256;
/// Default idle timeout (capped by `ttl`).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(2 * 3600);

/// Estimated bytes of one entry besides its turns and state: moka's own
/// bookkeeping (key `Arc`, entry info, deque and timer nodes, hash bucket)
/// and the conversation header. Calibrated by `benches/context.rs`: with
/// 1,000,000 conversations of 20 × 80-byte turns the process grew by 4,079
/// bytes per conversation, and this makes the estimate match that.
const ENTRY_OVERHEAD: usize = 512;

/// The byte budget for one conversation of `turns` turns of about 80 bytes,
/// used to derive the default [`ContextLimits::max_bytes`].
pub fn bytes_per_conversation(turns: usize) -> u64 {
    // Per turn: the stored turn (40 B in the deque) plus an 80-byte text in
    // an `Arc<str>` (16 B header, malloc rounding: 112 B), with slack for a
    // few longer turns.
    (1024 + turns.max(1) * 192) as u64
}

/// The store's bounds, from [`ContextConfig`] or set directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextLimits {
    /// Upper bound of the weighed size of all conversations, in bytes.
    pub max_bytes: u64,
    /// A conversation is dropped this long after it started.
    pub ttl: Duration,
    /// A conversation is dropped this long after its last exchange.
    pub idle: Duration,
    /// Turns (user and assistant) kept per conversation.
    pub turns: usize,
}

impl ContextLimits {
    /// The limits `cfg` describes, with `max_bytes` and `idle` derived.
    pub fn from_config(cfg: &ContextConfig) -> Self {
        let ttl = cfg.ttl.0;
        Self {
            max_bytes: cfg
                .max_conversations
                .saturating_mul(bytes_per_conversation(cfg.turns)),
            ttl,
            idle: ttl.min(DEFAULT_IDLE),
            turns: cfg.turns,
        }
    }
}

/// Who spoke a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// A platform name; the known ones cost no allocation per turn.
#[derive(Debug, Clone)]
enum PlatformName {
    Known(&'static str),
    Other(Box<str>),
}

impl PlatformName {
    fn new(name: &str) -> Self {
        match crate::policy::identities::PLATFORMS
            .iter()
            .find(|p| **p == name)
        {
            Some(p) => PlatformName::Known(p),
            None => PlatformName::Other(name.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            PlatformName::Known(p) => p,
            PlatformName::Other(p) => p,
        }
    }
}

/// One stored turn. The text is an `Arc` so copying a conversation on
/// update does not copy its texts.
#[derive(Debug, Clone)]
struct StoredTurn {
    text: Arc<str>,
    at: i64,
    platform: PlatformName,
    role: Role,
}

/// One conversation, immutable once in the cache (updates replace it).
#[derive(Debug, Clone)]
struct Conversation {
    started: Instant,
    updated: Instant,
    turns: VecDeque<StoredTurn>,
    state: BTreeMap<String, String>,
    attributes: BTreeMap<String, String>,
}

/// glibc-like allocation size for a request of `n` bytes.
fn alloc_size(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

fn map_weight(map: &BTreeMap<String, String>) -> usize {
    // Two `String`s per entry in a B-tree node (about 2/3 full) plus texts.
    map.iter()
        .map(|(k, v)| 72 + alloc_size(k.len()) + alloc_size(v.len()))
        .sum()
}

impl Conversation {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            updated: now,
            turns: VecDeque::new(),
            state: BTreeMap::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// Whether the limits have run out at `now` (moka reports an entry that
    /// expired by its per-entry expiry and was then overwritten as
    /// `Replaced`, so the listener asks this).
    fn is_expired(&self, limits: &ContextLimits, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= limits.ttl
            || now.saturating_duration_since(self.updated) >= limits.idle
    }

    /// Estimated heap bytes of this entry, key and moka bookkeeping included.
    fn weight(&self, key: &str) -> usize {
        let turns: usize = self
            .turns
            .iter()
            .map(|t| {
                alloc_size(16 + t.text.len())
                    + match &t.platform {
                        PlatformName::Known(_) => 0,
                        PlatformName::Other(p) => alloc_size(p.len()),
                    }
            })
            .sum();
        ENTRY_OVERHEAD
            + alloc_size(key.len())
            + alloc_size(16 + std::mem::size_of::<Conversation>())
            + alloc_size(self.turns.capacity() * std::mem::size_of::<StoredTurn>())
            + turns
            + map_weight(&self.state)
            + map_weight(&self.attributes)
    }
}

/// Drops conversations `ttl` after they started and `idle` after their last
/// write; reads do not extend either.
struct ConversationExpiry {
    ttl: Duration,
    idle: Duration,
}

impl Expiry<String, Arc<Conversation>> for ConversationExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        _value: &Arc<Conversation>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.idle.min(self.ttl))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<Conversation>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        let age = updated_at.saturating_duration_since(value.started);
        Some(self.idle.min(self.ttl.saturating_sub(age)))
    }
}

/// The conversation key: used for context and for consistent hashing.
///
/// A private chat (or one without a room) of a person linked in
/// `identities.yaml` is `person:<id>`, so it continues across platforms; an
/// unlinked private chat is `<platform>:dm:<sender>`; a group is
/// `<platform>:room:<room>` (plus `:thread:<thread>`), shared by everyone in
/// it and never merged with anyone's private chat. When the message has a
/// tenant (the JWT `tenant` claim, the platform's team, corp or tenant id),
/// it follows the platform: `<platform>@<tenant>:…`, so one tenant can never
/// read or extend another tenant's conversation by naming the same room or
/// user id. `:`, `@` and `%` inside ids are percent-encoded so no two
/// distinct chats share a key.
pub fn conversation_key(platform: &str, msg: &PlatformMessage, person: Option<&str>) -> String {
    let mut key = String::with_capacity(
        platform.len() + msg.tenant.len() + msg.room_id.len() + msg.thread_id.len() + 24,
    );
    if msg.chat_type == ChatType::Private || msg.room_id.is_empty() {
        if let Some(person) = person {
            key.push_str("person:");
            push_escaped(&mut key, person);
            return key;
        }
    }
    push_escaped(&mut key, platform);
    if !msg.tenant.is_empty() {
        key.push('@');
        push_escaped(&mut key, &msg.tenant);
    }
    if msg.chat_type == ChatType::Private || msg.room_id.is_empty() {
        key.push_str(":dm:");
        push_escaped(&mut key, &msg.sender_id);
    } else {
        key.push_str(":room:");
        push_escaped(&mut key, &msg.room_id);
        if !msg.thread_id.is_empty() {
            key.push_str(":thread:");
            push_escaped(&mut key, &msg.thread_id);
        }
    }
    key
}

fn push_escaped(out: &mut String, part: &str) {
    for c in part.chars() {
        match c {
            ':' | '%' | '@' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The turns one exchange adds: the user's text and the assistant's reply
/// parts joined into one turn, each cut to [`MAX_TURN_BYTES`]; empty texts
/// add no turn. Shared with the Redis tier, so both bound turns alike.
fn exchange_turns<A: AsRef<str>>(
    user_turn: &str,
    assistant_texts: impl IntoIterator<Item = A>,
) -> impl Iterator<Item = (Role, String)> {
    let mut assistant = String::new();
    for part in assistant_texts {
        let room = MAX_TURN_BYTES.saturating_sub(assistant.len());
        if room == 0 {
            break;
        }
        assistant.push_str(cut(part.as_ref(), room));
    }
    let user = cut(user_turn, MAX_TURN_BYTES).to_string();
    [(Role::User, user), (Role::Assistant, assistant)]
        .into_iter()
        .filter(|(_, text)| !text.is_empty())
}

/// The turns of one exchange as (`user` | `assistant`, text), for the
/// Redis tier (see [`exchange_turns`]).
pub(crate) fn exchange_turn_texts<A: AsRef<str>>(
    user_turn: &str,
    assistant_texts: impl IntoIterator<Item = A>,
) -> Vec<(&'static str, String)> {
    exchange_turns(user_turn, assistant_texts)
        .map(|(role, text)| (role.as_str(), text))
        .collect()
}

/// Whether a state update fits the bounds (a key of 1 to
/// [`MAX_STATE_KEY_BYTES`] bytes, a value of at most
/// [`MAX_STATE_VALUE_BYTES`]); an empty value, a removal, always fits.
pub(crate) fn state_update_fits(key: &str, value: &str) -> bool {
    value.is_empty()
        || (!key.is_empty()
            && key.len() <= MAX_STATE_KEY_BYTES
            && value.len() <= MAX_STATE_VALUE_BYTES)
}

/// Merges `updates` into `map` within the state bounds; an empty value
/// removes the key. Returns how many updates were dropped.
fn merge_bounded<K: AsRef<str>, V: AsRef<str>>(
    map: &mut BTreeMap<String, String>,
    updates: impl IntoIterator<Item = (K, V)>,
) -> u64 {
    let mut dropped = 0;
    for (k, v) in updates {
        let (k, v) = (k.as_ref(), v.as_ref());
        if v.is_empty() {
            map.remove(k);
            continue;
        }
        if !state_update_fits(k, v) {
            dropped += 1;
            continue;
        }
        if let Some(slot) = map.get_mut(k) {
            slot.clear();
            slot.push_str(v);
        } else if map.len() < MAX_STATE_KEYS {
            map.insert(k.to_string(), v.to_string());
        } else {
            dropped += 1;
        }
    }
    dropped
}

/// The conversation context cache. Cheap to share behind an `Arc`; every
/// method takes `&self`.
pub struct ContextStore {
    cache: Cache<String, Arc<Conversation>>,
    limits: ContextLimits,
    metrics: Metrics,
}

impl std::fmt::Debug for ContextStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextStore")
            .field("limits", &self.limits)
            .field("entries", &self.cache.entry_count())
            .field("weighted_size", &self.cache.weighted_size())
            .finish()
    }
}

impl ContextStore {
    /// A store with the bounds `cfg` describes (see [`ContextLimits::from_config`]).
    pub fn new(cfg: &ContextConfig, metrics: Metrics) -> Self {
        Self::with_limits(ContextLimits::from_config(cfg), metrics)
    }

    /// A store with explicit bounds.
    pub fn with_limits(limits: ContextLimits, metrics: Metrics) -> Self {
        let listener_metrics = metrics.clone();
        let listener_limits = limits.clone();
        let cache = Cache::builder()
            .max_capacity(limits.max_bytes)
            .weigher(|key: &String, conv: &Arc<Conversation>| {
                u32::try_from(conv.weight(key)).unwrap_or(u32::MAX)
            })
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(ConversationExpiry {
                ttl: limits.ttl,
                idle: limits.idle,
            })
            .eviction_listener(move |_key, conv: Arc<Conversation>, cause| {
                let event = match cause {
                    RemovalCause::Size => "evicted",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Replaced if conv.is_expired(&listener_limits, Instant::now()) => {
                        "expired"
                    }
                    RemovalCause::Replaced | RemovalCause::Explicit => return,
                };
                listener_metrics
                    .context_events
                    .with_label_values(&[event])
                    .inc();
            })
            .build();
        Self {
            cache,
            limits,
            metrics,
        }
    }

    /// The store's bounds.
    pub fn limits(&self) -> &ContextLimits {
        &self.limits
    }

    /// The context to attach to the next message of conversation `key`
    /// (empty when there is none); counts a hit or a miss.
    pub fn snapshot(&self, key: &str) -> Context {
        let Some(conv) = self.cache.get(key) else {
            self.event("miss");
            return Context::default();
        };
        self.event("hit");
        Context {
            turns: conv
                .turns
                .iter()
                .map(|t| Turn {
                    role: t.role.as_str().to_string(),
                    text: t.text.to_string(),
                    at: t.at,
                    platform: t.platform.as_str().to_string(),
                })
                .collect(),
            state: conv
                .state
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            attributes: conv
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Records one exchange of conversation `key`: the user's (masked) text,
    /// the assistant's reply parts (joined into one turn) and the state the
    /// assistant returned in `Final.state` (an empty value removes a key).
    /// Both turns get time `at` (Unix ms) and `platform`. Keeps the last
    /// `turns` turns. Empty texts add no turn. Atomic per conversation.
    pub fn record_exchange<A, K, V>(
        &self,
        key: &str,
        user_turn: &str,
        assistant_texts: impl IntoIterator<Item = A>,
        state_updates: impl IntoIterator<Item = (K, V)>,
        platform: &str,
        at: i64,
    ) where
        A: AsRef<str>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let platform = PlatformName::new(platform);
        let new_turns: Vec<StoredTurn> = exchange_turns(user_turn, assistant_texts)
            .map(|(role, text)| StoredTurn {
                text: Arc::from(text),
                at,
                platform: platform.clone(),
                role,
            })
            .collect();
        let updates: Vec<(K, V)> = state_updates.into_iter().collect();
        if new_turns.is_empty() && updates.is_empty() {
            return;
        }
        let limit = self.limits.turns;
        let mut dropped = 0;
        self.cache.entry_by_ref(key).and_compute_with(|existing| {
            let old = existing.map(|e| e.into_value());
            let now = Instant::now();
            let started = old.as_ref().map_or(now, |c| c.started);
            let old_turns = old.as_ref().map_or(0, |c| c.turns.len());
            let total = old_turns + new_turns.len();
            let keep = total.min(limit);
            let mut turns = VecDeque::with_capacity(keep);
            let skip = total - keep;
            if let Some(c) = &old {
                turns.extend(c.turns.iter().skip(skip).cloned());
            }
            let skip_new = skip.saturating_sub(old_turns);
            turns.extend(new_turns.into_iter().skip(skip_new));
            let mut conv = Conversation {
                started,
                updated: now,
                turns,
                state: old.as_ref().map(|c| c.state.clone()).unwrap_or_default(),
                attributes: old
                    .as_ref()
                    .map(|c| c.attributes.clone())
                    .unwrap_or_default(),
            };
            dropped = merge_bounded(&mut conv.state, updates);
            Op::Put(Arc::new(conv))
        });
        self.after_write(dropped);
    }

    /// Merges `attributes` (for example the sender's platform attributes)
    /// into conversation `key`, within the state bounds, creating it if
    /// needed. An empty value removes a key. Atomic per conversation.
    pub fn set_attributes<K: AsRef<str>, V: AsRef<str>>(
        &self,
        key: &str,
        attributes: impl IntoIterator<Item = (K, V)>,
    ) {
        let mut dropped = 0;
        self.cache.entry_by_ref(key).and_compute_with(|existing| {
            let mut conv = existing
                .map(|e| Conversation::clone(&e.into_value()))
                .unwrap_or_else(Conversation::new);
            conv.updated = Instant::now();
            dropped = merge_bounded(&mut conv.attributes, attributes);
            Op::Put(Arc::new(conv))
        });
        self.after_write(dropped);
    }

    fn after_write(&self, dropped: u64) {
        self.sync_gauge();
        self.count_state_dropped(dropped);
    }

    /// Counts state updates dropped for the bounds (also by the Redis tier).
    pub fn count_state_dropped(&self, dropped: u64) {
        if dropped > 0 {
            tracing::debug!(dropped, "context state updates over the bounds dropped");
            self.metrics
                .context_events
                .with_label_values(&["state_dropped"])
                .inc_by(dropped);
        }
    }

    /// Forgets conversation `key` (for example on a user's `/reset`).
    /// Returns whether it existed.
    pub fn remove(&self, key: &str) -> bool {
        let existed = self.cache.remove(key).is_some();
        self.sync_gauge();
        existed
    }

    /// Number of conversations held (approximate until pending maintenance runs).
    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Estimated bytes held, as weighed against `max_bytes` (approximate
    /// until pending maintenance runs).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Runs moka's pending maintenance now: evictions, expirations and the
    /// counts above. The cache also does this on its own as it is used.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
        self.sync_gauge();
    }

    /// `moltgate_context_entries` follows moka's entry count, which is
    /// exact after maintenance and at most a few writes behind otherwise.
    fn sync_gauge(&self) {
        self.metrics
            .context_entries
            .set(i64::try_from(self.cache.entry_count()).unwrap_or(i64::MAX));
    }

    /// Counts a lookup made elsewhere (the Redis tier) as a hit or a miss.
    pub fn count_lookup(&self, found: bool) {
        self.event(if found { "hit" } else { "miss" });
    }

    fn event(&self, event: &str) {
        self.metrics
            .context_events
            .with_label_values(&[event])
            .inc();
    }
}

#[cfg(test)]
mod tests;
