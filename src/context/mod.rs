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
        if k.is_empty() || k.len() > MAX_STATE_KEY_BYTES || v.len() > MAX_STATE_VALUE_BYTES {
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
        let mut assistant = String::new();
        for part in assistant_texts {
            let room = MAX_TURN_BYTES.saturating_sub(assistant.len());
            if room == 0 {
                break;
            }
            assistant.push_str(cut(part.as_ref(), room));
        }
        let platform = PlatformName::new(platform);
        let mut new_turns: Vec<StoredTurn> = Vec::with_capacity(2);
        for (role, text) in [(Role::User, user_turn), (Role::Assistant, &assistant)] {
            if !text.is_empty() {
                new_turns.push(StoredTurn {
                    text: Arc::from(cut(text, MAX_TURN_BYTES)),
                    at,
                    platform: platform.clone(),
                    role,
                });
            }
        }
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

    fn event(&self, event: &str) {
        self.metrics
            .context_events
            .with_label_values(&[event])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const NO_STATE: [(&str, &str); 0] = [];

    fn store(limits: ContextLimits) -> (ContextStore, Metrics) {
        let metrics = Metrics::new();
        (ContextStore::with_limits(limits, metrics.clone()), metrics)
    }

    fn limits(turns: usize) -> ContextLimits {
        ContextLimits {
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(3600),
            idle: Duration::from_secs(3600),
            turns,
        }
    }

    fn events(m: &Metrics, event: &str) -> u64 {
        m.context_events.with_label_values(&[event]).get()
    }

    fn texts(ctx: &Context) -> Vec<String> {
        ctx.turns
            .iter()
            .map(|t| format!("{}:{}", t.role, t.text))
            .collect()
    }

    /// Polls `cond` (running moka's maintenance first) for at most 5 s.
    fn eventually(s: &ContextStore, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            s.run_pending_tasks();
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn keys_for_private_group_and_linked_chats() {
        let k = |platform, chat_type: &str, room: &str, thread: &str, sender: &str, person| {
            let msg = PlatformMessage {
                chat_type: ChatType::parse(chat_type).unwrap_or_default(),
                room_id: room.into(),
                thread_id: thread.into(),
                sender_id: sender.into(),
                ..Default::default()
            };
            conversation_key(platform, &msg, person)
        };
        // Unlinked: the same shapes as before identity linking.
        assert_eq!(k("slack", "group", "c1", "", "u1", None), "slack:room:c1");
        assert_eq!(
            k("slack", "group", "c1", "t", "u1", None),
            "slack:room:c1:thread:t"
        );
        assert_eq!(k("slack", "private", "d1", "", "u1", None), "slack:dm:u1");
        assert_eq!(k("generic", "", "", "", "sub", None), "generic:dm:sub");
        // A linked person's private chats continue across platforms...
        let tg = k("telegram", "private", "555", "", "555", Some("zhangsan"));
        let wc = k("wecom", "private", "", "", "zhangsan", Some("zhangsan"));
        assert_eq!(tg, "person:zhangsan");
        assert_eq!(tg, wc);
        // ...but a group stays the group's, whoever speaks.
        let g1 = k("telegram", "group", "-100", "", "555", Some("zhangsan"));
        let g2 = k("telegram", "group", "-100", "", "777", None);
        assert_eq!(g1, g2);
        assert_ne!(g1, tg);
        assert_ne!(
            g1,
            k("telegram", "group", "-200", "", "555", Some("zhangsan"))
        );
        assert_ne!(g1, k("wecom", "group", "-100", "", "555", Some("zhangsan")));
        // Separators inside ids cannot forge another chat's key.
        assert_ne!(
            k("slack", "group", "a:thread:b", "", "u", None),
            k("slack", "group", "a", "b", "u", None)
        );
        assert_eq!(
            k("slack", "group", "a:b%", "", "u", None),
            "slack:room:a%3Ab%25"
        );
    }

    #[test]
    fn a_tenant_scopes_rooms_and_private_chats() {
        let msg = |tenant: &str, chat_type, room: &str, sender: &str| PlatformMessage {
            tenant: tenant.into(),
            chat_type,
            room_id: room.into(),
            sender_id: sender.into(),
            ..Default::default()
        };
        let room_a = conversation_key("generic", &msg("acme", ChatType::Group, "ops", "u1"), None);
        let room_b = conversation_key(
            "generic",
            &msg("initech", ChatType::Group, "ops", "u1"),
            None,
        );
        assert_eq!(room_a, "generic@acme:room:ops");
        assert_ne!(
            room_a, room_b,
            "the same room name in two tenants is two rooms"
        );
        let dm_a = conversation_key(
            "wecom",
            &msg("corp1", ChatType::Private, "", "zhangsan"),
            None,
        );
        let dm_b = conversation_key(
            "wecom",
            &msg("corp2", ChatType::Private, "", "zhangsan"),
            None,
        );
        assert_ne!(dm_a, dm_b, "user ids are unique per corp only");
        // A tenant cannot be forged through the separators.
        let forged = conversation_key(
            "generic",
            &msg("acme:room:ops", ChatType::Private, "", "x"),
            None,
        );
        assert!(!forged.starts_with("generic@acme:room:ops"), "{forged}");
        // A linked person's private chat is the person's, whatever the tenant.
        let linked = conversation_key(
            "wecom",
            &msg("corp1", ChatType::Private, "", "z"),
            Some("zhangsan"),
        );
        assert_eq!(linked, "person:zhangsan");
    }

    #[test]
    fn turns_are_kept_in_order_and_trimmed() {
        let (s, _) = store(limits(4));
        assert!(s.snapshot("k").turns.is_empty());
        s.record_exchange("k", "q1", ["a1"], NO_STATE, "telegram", 1);
        s.record_exchange("k", "q2", ["a2"], NO_STATE, "wecom", 2);
        assert_eq!(
            texts(&s.snapshot("k")),
            ["user:q1", "assistant:a1", "user:q2", "assistant:a2"]
        );
        s.record_exchange("k", "q3", ["a3"], NO_STATE, "slack", 3);
        let ctx = s.snapshot("k");
        assert_eq!(
            texts(&ctx),
            ["user:q2", "assistant:a2", "user:q3", "assistant:a3"]
        );
        assert_eq!(ctx.turns[0].platform, "wecom");
        assert_eq!(ctx.turns[0].at, 2);
        assert_eq!(ctx.turns[3].platform, "slack");
        // Other conversations are untouched.
        assert!(s.snapshot("other").turns.is_empty());
    }

    #[test]
    fn a_limit_smaller_than_one_exchange_keeps_the_newest() {
        let (s, _) = store(limits(1));
        s.record_exchange("k", "q1", ["a1"], NO_STATE, "generic", 1);
        assert_eq!(texts(&s.snapshot("k")), ["assistant:a1"]);
        let (s, _) = store(limits(3));
        s.record_exchange("k", "q1", ["a1"], NO_STATE, "generic", 1);
        s.record_exchange("k", "q2", ["a2"], NO_STATE, "generic", 1);
        assert_eq!(
            texts(&s.snapshot("k")),
            ["assistant:a1", "user:q2", "assistant:a2"]
        );
    }

    #[test]
    fn reply_parts_join_and_empty_texts_add_no_turn() {
        let (s, _) = store(limits(10));
        s.record_exchange("k", "hi", ["Hel", "lo"], NO_STATE, "generic", 1);
        s.record_exchange("k", "", Vec::<String>::new(), NO_STATE, "generic", 2);
        s.record_exchange("k", "only me", Vec::<&str>::new(), NO_STATE, "generic", 3);
        assert_eq!(
            texts(&s.snapshot("k")),
            ["user:hi", "assistant:Hello", "user:only me"]
        );
        // Nothing to record creates nothing.
        s.record_exchange("empty", "", [""], NO_STATE, "generic", 1);
        s.run_pending_tasks();
        assert_eq!(s.entries(), 1);
    }

    #[test]
    fn long_turns_are_cut_at_a_char_boundary() {
        let (s, _) = store(limits(10));
        let long = "é".repeat(MAX_TURN_BYTES); // 2 bytes each
        s.record_exchange("k", &long, [&long, &long], NO_STATE, "generic", 1);
        let ctx = s.snapshot("k");
        for t in &ctx.turns {
            assert!(t.text.len() <= MAX_TURN_BYTES && t.text.len() >= MAX_TURN_BYTES - 1);
            assert!(t.text.chars().all(|c| c == 'é'));
        }
    }

    #[test]
    fn state_merges_within_bounds() {
        let (s, m) = store(limits(10));
        let mut first: HashMap<String, String> = (0..70)
            .map(|i| (format!("k{i:02}"), format!("v{i}")))
            .collect();
        first.insert("big".into(), "x".repeat(MAX_STATE_VALUE_BYTES + 1));
        first.insert("y".repeat(MAX_STATE_KEY_BYTES + 1), "v".into());
        first.insert(String::new(), "v".into());
        s.record_exchange("k", "q", ["a"], &first, "generic", 1);
        let state = s.snapshot("k").state;
        assert_eq!(state.len(), MAX_STATE_KEYS);
        assert!(!state.contains_key("big"));
        // 70 - 64 extra keys, one long value, one long key, one empty key.
        assert_eq!(events(&m, "state_dropped"), 9);

        // Updating and deleting existing keys works even when full.
        let exact = "z".repeat(MAX_STATE_VALUE_BYTES);
        let existing = state.keys().next().cloned().unwrap();
        let deleted = state.keys().nth(1).cloned().unwrap();
        s.record_exchange(
            "k",
            "q",
            ["a"],
            [(existing.as_str(), exact.as_str()), (deleted.as_str(), "")],
            "generic",
            2,
        );
        let state = s.snapshot("k").state;
        assert_eq!(state.get(&existing), Some(&exact));
        assert!(!state.contains_key(&deleted));
        assert_eq!(state.len(), MAX_STATE_KEYS - 1);
        // Now there is room for one new key.
        s.record_exchange(
            "k",
            "",
            [""],
            [("stage", "done"), ("more", "x")],
            "generic",
            3,
        );
        let state = s.snapshot("k").state;
        assert_eq!(state.get("stage").map(String::as_str), Some("done"));
        assert_eq!(state.len(), MAX_STATE_KEYS);
    }

    #[test]
    fn attributes_are_kept_and_bounded() {
        let (s, _) = store(limits(10));
        s.set_attributes("k", [("device_type", "mobile"), ("tenant", "t1")]);
        s.record_exchange("k", "q", ["a"], [("stage", "1")], "generic", 1);
        let ctx = s.snapshot("k");
        assert_eq!(
            ctx.attributes.get("device_type").map(String::as_str),
            Some("mobile")
        );
        assert_eq!(ctx.state.get("stage").map(String::as_str), Some("1"));
        assert_eq!(ctx.turns.len(), 2);
        let many: Vec<(String, String)> = (0..100).map(|i| (format!("a{i}"), "v".into())).collect();
        s.set_attributes("k", many);
        assert_eq!(s.snapshot("k").attributes.len(), MAX_STATE_KEYS);
    }

    #[test]
    fn hits_misses_entries_and_remove() {
        let (s, m) = store(limits(10));
        s.snapshot("a");
        s.record_exchange("a", "q", ["r"], NO_STATE, "generic", 1);
        s.record_exchange("b", "q", ["r"], NO_STATE, "generic", 1);
        s.record_exchange("a", "q", ["r"], NO_STATE, "generic", 2);
        s.snapshot("a");
        s.snapshot("b");
        assert_eq!((events(&m, "hit"), events(&m, "miss")), (2, 1));
        s.run_pending_tasks();
        assert_eq!(s.entries(), 2);
        assert_eq!(m.context_entries.get(), 2);
        assert!(s.remove("a"));
        assert!(!s.remove("a"));
        assert!(eventually(&s, || m.context_entries.get() == 1 && s.entries() == 1));
        assert!(s.snapshot("a").turns.is_empty());
    }

    #[test]
    fn idle_conversations_expire() {
        let (s, m) = store(ContextLimits {
            idle: Duration::from_millis(100),
            ..limits(10)
        });
        s.record_exchange("k", "q", ["a"], NO_STATE, "generic", 1);
        assert_eq!(s.snapshot("k").turns.len(), 2);
        assert!(eventually(&s, || s.snapshot("k").turns.is_empty()));
        assert!(eventually(&s, || m.context_entries.get() == 0));
        assert_eq!(events(&m, "expired"), 1);
    }

    #[test]
    fn busy_conversations_still_end_at_ttl() {
        // Updates every few ms keep it from ever being idle, yet it must end
        // `ttl` after it started (moka's own ttl would restart on each write).
        let (s, _) = store(ContextLimits {
            ttl: Duration::from_millis(300),
            ..limits(10_000)
        });
        let started = Instant::now();
        let mut i = 0;
        let ended = eventually(&s, || {
            i += 1;
            s.record_exchange("k", &format!("q{i}"), ["a"], NO_STATE, "generic", i);
            // Empty (expired between the write and this read) also means it ended.
            s.snapshot("k").turns.first().map(|t| t.text.as_str()) != Some("q1")
        });
        assert!(ended, "the conversation outlived its ttl");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // One more exchange starts the next conversation whichever way the
        // old one ended (overwritten, or read back empty once expired).
        s.record_exchange("k", "next", ["a"], NO_STATE, "generic", i + 1);
        // The overwritten expired conversation counts as expired, and the
        // gauge still shows one conversation.
        s.run_pending_tasks();
        assert_eq!(s.metrics.context_entries.get(), 1);
        assert_eq!(events(&s.metrics, "expired"), 1);
    }

    #[test]
    fn byte_bound_is_enforced_lru() {
        let (probe, _) = store(limits(20));
        let text = "x".repeat(80);
        for _ in 0..10 {
            probe.record_exchange("conv:0", &text, [&text], NO_STATE, "telegram", 1);
        }
        probe.run_pending_tasks();
        let one = probe.weighted_size();
        assert!(one > 0 && one <= bytes_per_conversation(20), "{one}");

        let (s, m) = store(ContextLimits {
            max_bytes: one * 50,
            ..limits(20)
        });
        for i in 0..500 {
            for _ in 0..10 {
                s.record_exchange(
                    &format!("conv:{i}"),
                    &text,
                    [&text],
                    NO_STATE,
                    "telegram",
                    1,
                );
            }
        }
        s.run_pending_tasks();
        assert!(
            s.weighted_size() <= one * 50,
            "{} > {}",
            s.weighted_size(),
            one * 50
        );
        assert!(s.entries() <= 50 && s.entries() >= 40, "{}", s.entries());
        assert_eq!(m.context_entries.get() as u64, s.entries());
        assert!(events(&m, "evicted") >= 450);
        // The most recent conversation survives.
        assert_eq!(s.snapshot("conv:499").turns.len(), 20);
    }

    #[test]
    fn concurrent_exchanges_never_lose_a_turn() {
        let (s, _) = store(limits(10_000));
        let s = Arc::new(s);
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        s.record_exchange(
                            "k",
                            &format!("{t}-{i}"),
                            ["r"],
                            [(format!("t{t}"), format!("{i}"))],
                            "generic",
                            i,
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let ctx = s.snapshot("k");
        assert_eq!(ctx.turns.len(), 8 * 50 * 2);
        assert_eq!(ctx.state.len(), 8);
        assert!(ctx.state.values().all(|v| v == "49"));
    }

    #[test]
    fn limits_from_config() {
        let l = ContextLimits::from_config(&ContextConfig::default());
        assert_eq!(l.turns, 20);
        assert_eq!(l.ttl, Duration::from_secs(24 * 3600));
        assert_eq!(l.idle, DEFAULT_IDLE);
        assert_eq!(l.max_bytes, 100_000 * bytes_per_conversation(20));
        let short = ContextConfig {
            ttl: crate::config::yaml::HumanDuration(Duration::from_secs(60)),
            ..ContextConfig::default()
        };
        assert_eq!(
            ContextLimits::from_config(&short).idle,
            Duration::from_secs(60)
        );
        let s = ContextStore::new(&ContextConfig::default(), Metrics::new());
        assert_eq!(s.limits().max_bytes, l.max_bytes);
    }
}
