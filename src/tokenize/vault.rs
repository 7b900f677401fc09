//! Where the originals of tokens are kept: SM4-GCM ciphertext only, per
//! tenant, conversation and token id, for the configured TTL.
//!
//! A trait, because the store depends on the deployment: one node keeps
//! the vault in memory ([`MemoryVault`], moka, bounded by entry count);
//! edge nodes that share state need it in the shared tier, so that a reply
//! restored on node B finds what node A tokenised. The vault never sees a
//! key or a plain value: [`super::Tokenizer`] seals before `put` and opens
//! after `get`, and the associated data binds each ciphertext to its tenant,
//! conversation and token, so an entry moved to another key does not open.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// Where one token's entries are: tenant, conversation, token id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VaultKey {
    /// The tenant.
    pub tenant: Arc<str>,
    /// The conversation.
    pub conversation: Arc<str>,
    /// The token id (lower-case base32).
    pub id: Arc<str>,
}

/// One sealed value: its token's label and `nonce || ciphertext || tag`.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The token's label.
    pub label: String,
    /// The sealed value.
    pub sealed: Vec<u8>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("label", &self.label)
            .field("sealed_bytes", &self.sealed.len())
            .finish()
    }
}

/// Why the vault could not answer. Carries no value (it never has one).
#[derive(Debug, Clone, thiserror::Error)]
#[error("token vault: {0}")]
pub struct VaultError(pub String);

/// A store of sealed values.
#[async_trait]
pub trait TokenVault: Send + Sync + fmt::Debug {
    /// Every entry under `key` (one per label; more than one only when two
    /// types' ids collide).
    async fn get(&self, key: &VaultKey) -> Result<Vec<Entry>, VaultError>;

    /// Stores `entry` under `key`, replacing an entry with the same label,
    /// and starts the TTL of `key` again.
    async fn put(&self, key: &VaultKey, entry: Entry) -> Result<(), VaultError>;
}

/// The in-memory vault: moka, bounded by the number of token ids kept,
/// each kept for the TTL since it was last stored.
pub struct MemoryVault {
    cache: moka::sync::Cache<VaultKey, Arc<[Entry]>>,
}

impl fmt::Debug for MemoryVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryVault")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl MemoryVault {
    /// A vault keeping at most `max_entries` token ids, each for `ttl`.
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }
}

#[async_trait]
impl TokenVault for MemoryVault {
    async fn get(&self, key: &VaultKey) -> Result<Vec<Entry>, VaultError> {
        Ok(self.cache.get(key).map(|e| e.to_vec()).unwrap_or_default())
    }

    async fn put(&self, key: &VaultKey, entry: Entry) -> Result<(), VaultError> {
        let mut entries = self.cache.get(key).map(|e| e.to_vec()).unwrap_or_default();
        entries.retain(|e| e.label != entry.label);
        entries.push(entry);
        self.cache.insert(key.clone(), entries.into());
        Ok(())
    }
}
