//! Restoring tokens in a reply that arrives in pieces (SSE deltas,
//! WebSocket frames, gRPC reply parts).
//!
//! A token can be split across pieces (`⟨CN_MOB` + `ILE:q7mz…⟩`), so a piece
//! cannot be restored alone. [`Restorer`] emits everything up to the first
//! position where (the start of) a token could still be, and holds the
//! rest: at most [`MAX_TOKEN_BYTES`] bytes, and usually nothing, since an
//! unbracketed token must start with one of the policy's labels and a
//! bracketed one with an opening bracket. The output, concatenated, is the
//! same however the reply is split ([`super::Tokenizer::restore`] is one
//! push and a finish).

use std::ops::Deref;

use super::scan::{self, Labels, MAX_TOKEN_BYTES};
use super::{Scope, Tokenizer};

/// Restores the tokens of one reply stream for one tenant and conversation.
///
/// `T` keeps the tokenizer alive for the stream (an `Arc<Tokenizer>`, or a
/// `&Tokenizer`).
pub struct Restorer<T> {
    tokenizer: T,
    tenant: String,
    conversation: String,
    labels: Labels,
    /// Input taken but not emitted: the start of a possible token.
    held: String,
    /// The last input character emitted (a label must start a word).
    prev: Option<char>,
}

impl<T> std::fmt::Debug for Restorer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restorer")
            .field("tenant", &self.tenant)
            .field("conversation", &self.conversation)
            .field("held_bytes", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl<T: Deref<Target = Tokenizer>> Restorer<T> {
    /// A restorer for the reply to `scope`'s conversation; `labels`: the
    /// policy's tokenize labels ([`Labels::from_rules`]).
    pub fn new(tokenizer: T, scope: Scope<'_>, labels: Labels) -> Self {
        Self {
            tokenizer,
            tenant: scope.tenant.to_string(),
            conversation: scope.conversation.to_string(),
            labels,
            held: String::new(),
            prev: None,
        }
    }

    /// Takes the next piece; returns what can be emitted, tokens restored.
    pub async fn push(&mut self, delta: &str) -> String {
        self.held.push_str(delta);
        self.drain(false).await
    }

    /// Ends the stream: emits the held tail, tokens restored.
    pub async fn finish(mut self) -> String {
        self.drain(true).await
    }

    /// Bytes taken but not emitted yet.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// The most bytes [`Self::held_len`] can be after a `push`.
    pub fn bound() -> usize {
        MAX_TOKEN_BYTES
    }

    async fn drain(&mut self, eof: bool) -> String {
        let (found, hold) = scan::find(&self.held, self.prev, &self.labels, eof);
        let scope = Scope {
            tenant: &self.tenant,
            conversation: &self.conversation,
        };
        let mut out = String::with_capacity(hold);
        let mut at = 0;
        for (start, f) in &found {
            out.push_str(self.held.get(at..*start).unwrap_or_default());
            match self.tokenizer.resolve(scope, f).await {
                Some(value) => out.push_str(&value),
                None => out.push_str(self.held.get(*start..f.end).unwrap_or_default()),
            }
            at = f.end;
        }
        out.push_str(self.held.get(at..hold).unwrap_or_default());
        if let Some(c) = self.held.get(..hold).and_then(|s| s.chars().next_back()) {
            self.prev = Some(c);
        }
        self.held.drain(..hold);
        out
    }
}
