//! Reversible tokenisation (`action: tokenize`): the product brief's "SM4
//! dynamic masking".
//!
//! A DLP finding whose rule says `tokenize` is replaced, before the AI sees
//! the message, by a typed token such as `⟨CN_MOBILE:q7mzk2x4ba5t⟩`
//! ([`format`]). The same value gives the same token within one tenant, so
//! the model can still tell two numbers apart or see that one repeats. The
//! original is kept SM4-GCM encrypted in a [`TokenVault`], bound to tenant,
//! conversation and token. In the reply to that conversation the tokens
//! are put back ([`Tokenizer::restore`], or [`Restorer`] on a stream), so
//! the user gets a useful answer; a token seen in another tenant's or
//! another conversation's reply finds no entry (and an entry would not
//! authenticate there) and stays a token.
//!
//! Pieces, each its own module:
//! * [`crypto`]: the key, its checks, HMAC-SM3 and the derived keys, SM4-GCM;
//! * [`format`]: the token and what makes two values one;
//! * [`scan`]: finding tokens in replies, including ones a model rewrote;
//! * [`vault`]: where the sealed values live;
//! * [`restore`]: restoring a stream piece by piece.
//!
//! Values never reach `Debug`, `Display`, errors or logs: [`Token`] holds
//! only label and id, vault entries only ciphertext, and errors only say
//! what failed.

pub mod crypto;
pub mod format;
pub mod restore;
pub mod scan;
pub mod vault;

use std::sync::Arc;
use std::time::Duration;

use crate::policy::dlp::DlpOutcome;
use crypto::{frame, Keys};

pub use crypto::{KeyError, MasterKey};
pub use format::Token;
pub use restore::{Known, KnownRestorer, Restorer};
pub use scan::Labels;
pub use vault::{Entry, MemoryVault, TokenVault, VaultError, VaultKey};

/// Where a message belongs: values are stored, and restored, per tenant and
/// conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    /// The tenant (`Envelope.tenant`).
    pub tenant: &'a str,
    /// The conversation (`Envelope.conversation.id`).
    pub conversation: &'a str,
}

/// Why a value could not be tokenised. The caller masks it instead.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenizeError {
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The conversation already holds a different value under this token
    /// (a 60-bit id collision): restoring could show the wrong value.
    #[error("token {0} already stands for another value in this conversation")]
    Collision(Token),
}

/// Turns values into tokens and back, for one key and one vault.
#[derive(Debug)]
pub struct Tokenizer {
    keys: Keys,
    vault: Arc<dyn TokenVault>,
}

impl Tokenizer {
    /// A tokenizer over `vault` with the keys derived from `key`.
    pub fn new(key: &MasterKey, vault: Arc<dyn TokenVault>) -> Self {
        Self {
            keys: Keys::derive(key),
            vault,
        }
    }

    /// A tokenizer with an in-memory vault keeping at most `max_entries`
    /// token ids for `ttl` each.
    pub fn in_memory(key: &MasterKey, ttl: Duration, max_entries: u64) -> Self {
        Self::new(key, Arc::new(MemoryVault::new(ttl, max_entries)))
    }

    /// The token of `value` (found by rule `rule`) for `tenant`, without
    /// storing anything: what `moltgate dlp scan --tokenize` shows.
    pub fn token_for(&self, tenant: &str, rule: &str, value: &str) -> Token {
        Token::derive(&self.keys, tenant, rule, value)
    }

    /// The token of `value`, its original stored for `scope`'s conversation
    /// (the TTL starts again when the same value comes again). Fails on a
    /// vault error or an id collision; the caller then masks the value.
    pub async fn tokenize(
        &self,
        scope: Scope<'_>,
        rule: &str,
        value: &str,
    ) -> Result<Token, TokenizeError> {
        let token = self.token_for(scope.tenant, rule, value);
        let key = vault_key(scope, token.id());
        let aad = aad(scope, &token);
        let entries = self.vault.get(&key).await?;
        if let Some(old) = entries.iter().find(|e| e.label == token.label()) {
            let same = self.keys.open(&old.sealed, &aad).ok().is_some_and(|v| {
                format::normalise(&String::from_utf8_lossy(&v)) == format::normalise(value)
            });
            if !same {
                return Err(TokenizeError::Collision(token));
            }
        }
        let entry = Entry {
            label: token.label().to_string(),
            sealed: self.keys.seal(value.as_bytes(), &aad),
        };
        self.vault.put(&key, entry).await?;
        Ok(token)
    }

    /// `text` as the AI should see it: `outcome` (a scan of `text`) with
    /// each `tokenize` span replaced by its token, stored for `scope`. A
    /// value that cannot be tokenised stays masked (fail closed).
    pub async fn tokenize_outcome(
        &self,
        scope: Scope<'_>,
        text: &str,
        outcome: &DlpOutcome,
    ) -> String {
        self.tokenize_outcome_into(scope, text, outcome, &mut Known::default())
            .await
    }

    /// [`Self::tokenize_outcome`], noting each token and its value in
    /// `known` (what a proxied answer to this request may restore).
    pub async fn tokenize_outcome_into(
        &self,
        scope: Scope<'_>,
        text: &str,
        outcome: &DlpOutcome,
        known: &mut Known,
    ) -> String {
        let mut tokens = Vec::new();
        for span in outcome.token_spans() {
            let value = text.get(span.start..span.end).unwrap_or_default();
            let token = match self.tokenize(scope, &span.rule, value).await {
                Ok(t) => {
                    known.insert(&t, value);
                    Some(t.to_string())
                }
                Err(e) => {
                    tracing::warn!(rule = %span.rule, error = %e, "tokenize failed; value masked");
                    None
                }
            };
            tokens.push(token);
        }
        let mut next = tokens.into_iter();
        outcome.render(text, |_, _| next.next().flatten())
    }

    /// `text` with every token of `scope`'s conversation restored (see
    /// [`scan`] for the forms a model may have rewritten a token into).
    pub async fn restore(&self, scope: Scope<'_>, labels: &Labels, text: &str) -> String {
        let mut r = Restorer::new(self, scope, labels.clone());
        let mut out = r.push(text).await;
        out.push_str(&r.finish().await);
        out
    }

    /// The value of a found token in `scope`, if exactly one vault entry
    /// fits: the entry of the written label, else the only entry of the id.
    async fn resolve(&self, scope: Scope<'_>, found: &scan::Found) -> Option<String> {
        let entries = self.vault.get(&vault_key(scope, &found.id)).await.ok()?;
        let exact = found
            .label
            .as_deref()
            .and_then(|l| entries.iter().find(|e| e.label == l));
        let entry = match (exact, entries.as_slice()) {
            (Some(e), _) => e,
            (None, [only]) => only,
            _ => return None,
        };
        let token = Token::from_parts(entry.label.clone(), found.id.clone());
        let value = self.keys.open(&entry.sealed, &aad(scope, &token)).ok()?;
        String::from_utf8(value).ok()
    }
}

fn vault_key(scope: Scope<'_>, id: &str) -> VaultKey {
    VaultKey {
        tenant: scope.tenant.into(),
        conversation: scope.conversation.into(),
        id: id.into(),
    }
}

/// The associated data of a sealed value: tenant, conversation, token.
fn aad(scope: Scope<'_>, token: &Token) -> Vec<u8> {
    let token = token.to_string();
    frame(&[
        scope.tenant.as_bytes(),
        scope.conversation.as_bytes(),
        token.as_bytes(),
    ])
}

/// What `moltgate check` refuses about tokenisation: a `tokenize` rule
/// with no `tokenize:` block (nothing could store its values; they would
/// all be masked).
pub fn check_policy(configured: bool, dlp: &crate::policy::dlp::DlpPolicy) -> Result<(), String> {
    match dlp.tokenize_rules().next() {
        Some(rule) if !configured => Err(format!(
            "dlp rule '{rule}' has 'action: tokenize' but moltgate.yaml has no 'tokenize:' block; add `tokenize: {{ key: \"${{MOLTGATE_TOKEN_KEY}}\", ttl: 24h }}` or change the action"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
