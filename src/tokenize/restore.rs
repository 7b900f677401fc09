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
        let (text, found) = take(&mut self.held, &mut self.prev, &self.labels, eof);
        let scope = Scope {
            tenant: &self.tenant,
            conversation: &self.conversation,
        };
        let mut values = Vec::with_capacity(found.len());
        for (_, f) in &found {
            values.push(self.tokenizer.resolve(scope, f).await);
        }
        assemble(&text, &found, values)
    }
}

/// Takes from `held` what may be emitted (`eof`: everything), with the
/// tokens found in it; remembers its last character in `prev`.
fn take(
    held: &mut String,
    prev: &mut Option<char>,
    labels: &Labels,
    eof: bool,
) -> (String, Vec<(usize, scan::Found)>) {
    let (found, hold) = scan::find(held, *prev, labels, eof);
    let text: String = held.drain(..hold).collect();
    if let Some(c) = text.chars().next_back() {
        *prev = Some(c);
    }
    (text, found)
}

/// `text` with each found token replaced by its value, when it has one.
fn assemble(text: &str, found: &[(usize, scan::Found)], values: Vec<Option<String>>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for ((start, f), value) in found.iter().zip(values) {
        out.push_str(text.get(at..*start).unwrap_or_default());
        match value {
            Some(value) => out.push_str(&value),
            None => out.push_str(text.get(*start..f.end).unwrap_or_default()),
        }
        at = f.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// The tokens one request produced, with their values: what a proxied
/// answer to that request may restore. Built while tokenising the request
/// ([`super::Tokenizer::tokenize_outcome_into`]); an answer can only
/// restore a token that this request gave the model, so another tenant's
/// or conversation's token never restores. Lives for one request.
#[derive(Default, Clone)]
pub struct Known {
    /// id → (canonical label, value).
    by_id: std::collections::HashMap<String, Vec<(String, String)>>,
}

impl std::fmt::Debug for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Known")
            .field("tokens", &self.by_id.len())
            .finish()
    }
}

impl Known {
    /// Notes that `token` stands for `value`.
    pub fn insert(&mut self, token: &super::Token, value: &str) {
        let label = super::format::canonical_label(token.label());
        let entries = self.by_id.entry(token.id().to_string()).or_default();
        if !entries.iter().any(|(l, _)| *l == label) {
            entries.push((label, value.to_string()));
        }
    }

    /// Whether no token was produced.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The value of a found token, when exactly one entry fits (the rule of
    /// the vault's restore: the written label's, else the id's only one).
    fn resolve(&self, found: &scan::Found) -> Option<String> {
        let entries = self.by_id.get(&found.id)?;
        let exact = found
            .label
            .as_deref()
            .and_then(|l| entries.iter().find(|(label, _)| label == l));
        match (exact, entries.as_slice()) {
            (Some((_, v)), _) | (None, [(_, v)]) => Some(v.clone()),
            _ => None,
        }
    }

    /// The labels an unbracketed token may start with.
    fn labels(&self) -> Labels {
        Labels::from_canonical(self.by_id.values().flatten().map(|(l, _)| l.clone()))
    }

    /// `text` with the known tokens restored (a whole text: nothing held).
    pub fn restore(&self, text: &str) -> String {
        let mut held = text.to_string();
        let (text, found) = take(&mut held, &mut None, &self.labels(), true);
        let values = found.iter().map(|(_, f)| self.resolve(f)).collect();
        assemble(&text, &found, values)
    }
}

/// [`Restorer`] over a request's [`Known`] tokens: no vault, so it is
/// synchronous (usable inside a proxied stream's masker).
pub struct KnownRestorer {
    known: std::sync::Arc<Known>,
    labels: Labels,
    held: String,
    prev: Option<char>,
}

impl KnownRestorer {
    /// A restorer of `known`'s tokens.
    pub fn new(known: std::sync::Arc<Known>) -> Self {
        Self {
            labels: known.labels(),
            known,
            held: String::new(),
            prev: None,
        }
    }

    /// Takes the next piece; returns what can be emitted, tokens restored.
    pub fn push(&mut self, delta: &str) -> String {
        self.held.push_str(delta);
        self.drain(false)
    }

    /// Ends the stream: emits the held tail, tokens restored.
    pub fn finish(mut self) -> String {
        self.drain(true)
    }

    fn drain(&mut self, eof: bool) -> String {
        let (text, found) = take(&mut self.held, &mut self.prev, &self.labels, eof);
        let values = found.iter().map(|(_, f)| self.known.resolve(f)).collect();
        assemble(&text, &found, values)
    }
}
