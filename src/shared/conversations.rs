//! Conversation context shared by every node: a conversation continues on
//! whichever node its next message reaches.
//!
//! Keys, for conversation key `c` (see `crate::context::conversation_key`,
//! hashed when long):
//! - `{prefix}ctx:{c}:turns`: a LIST of JSON turns
//!   (`{"role","text","at","platform"}`), oldest first, trimmed to
//!   `context.turns`; each turn is cut to `context::MAX_TURN_BYTES` before
//!   it is sent;
//! - `{prefix}ctx:{c}:state`: a HASH of the assistant's `Final.state`,
//!   within the same key and value bounds as in memory;
//! - `{prefix}ctx:{c}:meta`: when the conversation started.
//!
//! All three expire together, `idle` after the last exchange and at most
//! `ttl` after the start (`conversations.lua` records an exchange in one
//! round trip: push, trim, state, expiry). A read is one pipelined round
//! trip. Nothing is cached per node: another node may have just written.
//! Identity links stay in the policy files.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Script;
use serde::{Deserialize, Serialize};

use super::{key_text, Shared, SharedError};
use crate::context::{self, ContextLimits, MAX_STATE_KEYS};
use crate::proto::v1::{Context, Turn};

static RECORD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("conversations.lua")));

/// One turn as stored in the list.
#[derive(Debug, Serialize, Deserialize)]
struct StoredTurn<'a> {
    role: &'a str,
    text: &'a str,
    at: i64,
    platform: &'a str,
}

/// One exchange to record.
pub struct Exchange<'a> {
    /// The user's text as the assistant saw it (masked).
    pub user_turn: &'a str,
    /// The reply parts as the user saw them.
    pub replies: &'a [String],
    /// `Final.state` updates (an empty value removes a key).
    pub state: &'a HashMap<String, String>,
    /// The platform the exchange happened on.
    pub platform: &'a str,
    /// Unix ms.
    pub at: i64,
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Shared {
    fn conversation_keys(&self, conversation: &str) -> [String; 3] {
        let c = key_text(conversation);
        ["turns", "state", "meta"].map(|part| self.key("ctx", &format!("{c}:{part}")))
    }

    /// The context to attach to the next message of `conversation`.
    pub async fn snapshot(&self, conversation: &str) -> Result<Context, SharedError> {
        let [turns, state, _] = self.conversation_keys(conversation);
        let (turns, state) = (&turns, &state);
        let (raw_turns, state): (Vec<String>, HashMap<String, String>) = self
            .call("context_read", |mut conn| async move {
                redis::pipe()
                    .lrange(turns, 0, -1)
                    .hgetall(state)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let turns = raw_turns
            .iter()
            .filter_map(|raw| serde_json::from_str::<StoredTurn<'_>>(raw).ok())
            .map(|t| Turn {
                role: t.role.to_string(),
                text: t.text.to_string(),
                at: t.at,
                platform: t.platform.to_string(),
            })
            .collect();
        Ok(Context {
            turns,
            state,
            attributes: HashMap::new(),
        })
    }

    /// Records one exchange of `conversation` within `limits`. Returns the
    /// number of state updates dropped for the bounds.
    pub async fn record(
        &self,
        conversation: &str,
        limits: &ContextLimits,
        exchange: Exchange<'_>,
    ) -> Result<u64, SharedError> {
        let turns: Vec<String> = context::exchange_turn_texts(exchange.user_turn, exchange.replies)
            .iter()
            .filter_map(|(role, text)| {
                serde_json::to_string(&StoredTurn {
                    role,
                    text,
                    at: exchange.at,
                    platform: exchange.platform,
                })
                .ok()
            })
            .collect();
        let mut dropped = 0u64;
        let mut updates = Vec::with_capacity(exchange.state.len() * 2);
        for (k, v) in exchange.state {
            if context::state_update_fits(k, v) {
                updates.push(k.clone());
                updates.push(v.clone());
            } else {
                dropped += 1;
            }
        }
        if turns.is_empty() && updates.is_empty() {
            return Ok(dropped);
        }
        let mut invocation = RECORD.prepare_invoke();
        for key in self.conversation_keys(conversation) {
            invocation.key(key);
        }
        invocation
            .arg(limits.turns.max(1))
            .arg(millis(limits.ttl))
            .arg(millis(limits.idle))
            .arg(MAX_STATE_KEYS)
            .arg(turns.len())
            .arg(turns)
            .arg(updates);
        let invocation = &invocation;
        let over: u64 = self
            .call("context_write", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(dropped + over)
    }
}
