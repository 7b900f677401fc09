//! The token vault in the shared tier: a reply restored on node B finds the
//! value node A tokenised (issue 15: "the original is stored SM4-GCM
//! encrypted … for tokenize.ttl, in memory or in the shared tier").
//!
//! [`RedisVault`] implements [`TokenVault`] over the node's [`Shared`]
//! client. It stores what the in-memory vault stores: sealed bytes only
//! (`nonce || ciphertext || tag`); the key and the plain value never leave
//! [`crate::tokenize::Tokenizer`], and the associated data of each
//! ciphertext binds it to its tenant, conversation and token.
//!
//! Key: `{prefix}tok:{tenant}:{conversation}:{id}`, a HASH of label →
//! sealed bytes (binary-safe), one field per label (more than one only when
//! two types' ids collide). Tenant and conversation are chosen by senders,
//! so each of the three parts is escaped as conversation keys are (`%`, `:`
//! become `%25`, `%3A`; `#` becomes `%23`, so an escaped part never looks
//! like a hashed one), then hashed when long ([`super::key_text`]): no two
//! (tenant, conversation, id) share a key. Without that, tenant `a:b` in
//! conversation `c` would share a key with tenant `a` in conversation
//! `b:c`: nothing would open there, but one could overwrite the other.
//!
//! `put` is one script: `HSET`, then `PEXPIRE` with `tokenize.ttl` (the TTL
//! starts again, as in memory), refusing a new label once the hash holds
//! [`MAX_LABELS`]. `get` is `HGETALL`, of which at most [`MAX_LABELS`]
//! entries are kept; a label longer than [`MAX_LABEL_BYTES`] or not UTF-8,
//! or sealed bytes longer than [`MAX_SEALED_BYTES`], is ignored.
//!
//! Both go through [`Shared::call`] (breaker, timeout, metrics as ops
//! `token_get` and `token_put`). A failure is a [`VaultError`] that names
//! what failed and never a key or value; the tokenizer then masks the value
//! on the way in (fail closed) and leaves a token as it is on the way out.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{key_text, Shared, SharedError};
use crate::tokenize::{Entry, TokenVault, VaultError, VaultKey};

/// Most labels kept per token id (a second one only on an id collision
/// between two types).
pub const MAX_LABELS: usize = 8;

/// Longest label kept (labels are at most 32 bytes, see
/// `tokenize::format::MAX_LABEL`).
pub const MAX_LABEL_BYTES: usize = 64;

/// Largest sealed value stored or read (64 KiB).
pub const MAX_SEALED_BYTES: usize = 64 * 1024;

static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS[1] token key; ARGV[1] label; ARGV[2] sealed bytes;
-- ARGV[3] ttl (ms); ARGV[4] most labels per key.
-- Returns 1 stored (ttl started again), 0 refused (too many labels).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
  and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1",
    )
});

/// The token vault of edge nodes that share state (`shared:`).
#[derive(Debug, Clone)]
pub struct RedisVault {
    shared: Arc<Shared>,
    ttl: Duration,
}

impl RedisVault {
    /// A vault on `shared` keeping each token id for `ttl` since it was
    /// last stored (`tokenize.ttl`).
    pub fn new(shared: Arc<Shared>, ttl: Duration) -> Self {
        Self { shared, ttl }
    }

    /// The Redis key of `key`.
    fn redis_key(&self, key: &VaultKey) -> String {
        self.shared.key("tok", &key_part(key))
    }
}

#[async_trait]
impl TokenVault for RedisVault {
    async fn get(&self, key: &VaultKey) -> Result<Vec<Entry>, VaultError> {
        let key = &self.redis_key(key);
        let fields: HashMap<Vec<u8>, Vec<u8>> = self
            .shared
            .call("token_get", |mut conn| async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
            })
            .await
            .map_err(vault_error)?;
        Ok(bounded_entries(fields))
    }

    async fn put(&self, key: &VaultKey, entry: Entry) -> Result<(), VaultError> {
        if !label_fits(entry.label.as_bytes()) {
            return Err(VaultError("label too long for the shared vault".into()));
        }
        if entry.sealed.len() > MAX_SEALED_BYTES {
            return Err(VaultError("value too long for the shared vault".into()));
        }
        let key = &self.redis_key(key);
        let ttl = millis(self.ttl);
        let entry = &entry;
        let stored: i64 = self
            .shared
            .call("token_put", |mut conn| async move {
                PUT.key(key)
                    .arg(entry.label.as_bytes())
                    .arg(entry.sealed.as_slice())
                    .arg(ttl)
                    .arg(MAX_LABELS)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
            .map_err(vault_error)?;
        match stored {
            1 => Ok(()),
            0 => Err(VaultError(format!(
                "token id already holds {MAX_LABELS} labels"
            ))),
            _ => Err(VaultError("shared vault answer not understood".into())),
        }
    }
}

/// `tenant:conversation:id`, each part escaped and hashed when long.
fn key_part(key: &VaultKey) -> String {
    let parts = [&key.tenant, &key.conversation, &key.id].map(|p| escaped(p));
    let parts = parts.each_ref().map(|p| key_text(p));
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(p);
    }
    out
}

/// `part` with `%`, `:` and `#` percent-escaped: no `:` separates inside a
/// part, and no escaped part starts like `key_text`'s `#` + SHA-256.
fn escaped(part: &str) -> Cow<'_, str> {
    if !part.contains(['%', ':', '#']) {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        match c {
            '%' | ':' | '#' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn label_fits(label: &[u8]) -> bool {
    !label.is_empty() && label.len() <= MAX_LABEL_BYTES
}

/// The entries of one `HGETALL` answer, within the bounds: at most
/// [`MAX_LABELS`], each with a UTF-8 label of at most [`MAX_LABEL_BYTES`]
/// and at most [`MAX_SEALED_BYTES`] sealed.
fn bounded_entries(fields: HashMap<Vec<u8>, Vec<u8>>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = fields
        .into_iter()
        .filter(|(label, sealed)| label_fits(label) && sealed.len() <= MAX_SEALED_BYTES)
        .filter_map(|(label, sealed)| {
            String::from_utf8(label)
                .ok()
                .map(|label| Entry { label, sealed })
        })
        .collect();
    // Stable across nodes and calls when more than the bound are there.
    entries.sort_by(|a, b| a.label.cmp(&b.label));
    entries.truncate(MAX_LABELS);
    entries
}

/// What failed, without key or value (a Redis error is named by its kind).
fn vault_error(e: SharedError) -> VaultError {
    VaultError(match e {
        SharedError::Open => "shared tier skipped: Redis is down (circuit open)".into(),
        SharedError::Timeout(d) => format!("shared tier timed out after {d:?}"),
        SharedError::Redis(e) => format!("shared tier command failed ({:?})", e.kind()),
        SharedError::Unexpected(what) => format!("shared tier answer not understood: {what}"),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, conversation: &str, id: &str) -> VaultKey {
        VaultKey {
            tenant: tenant.into(),
            conversation: conversation.into(),
            id: id.into(),
        }
    }

    #[test]
    fn plain_parts_are_kept_readable() {
        assert_eq!(
            key_part(&key("acme", "generic@acme", "q7mzk2x4ba5t")),
            "acme:generic@acme:q7mzk2x4ba5t"
        );
        assert_eq!(
            key_part(&key("a:b", "telegram:42", "q7mzk2x4ba5t")),
            "a%3Ab:telegram%3A42:q7mzk2x4ba5t"
        );
    }

    #[test]
    fn no_two_scopes_share_a_key() {
        let cases = [
            key("a:b", "c", "id"),
            key("a", "b:c", "id"),
            key("a", "b", "c:id"),
            key("a%3Ab", "c", "id"),
            key("a%b", "c", "id"),
            key("a%25b", "c", "id"),
            key("", ":", "id"),
            key(":", "", "id"),
            key("", "", ":id"),
        ];
        let keys: std::collections::HashSet<String> = cases.iter().map(key_part).collect();
        assert_eq!(keys.len(), cases.len(), "{keys:?}");
    }

    #[test]
    fn long_parts_are_hashed_and_never_mistaken_for_a_hash() {
        let long = "x".repeat(super::super::MAX_KEY_TEXT + 1);
        let k = key_part(&key(&long, "c", "id"));
        assert!(k.starts_with('#') && k.len() < 80, "{k}");
        // A short part that spells the hash of the long one is escaped.
        let hash = k.split(':').next().unwrap_or_default().to_string();
        assert_ne!(key_part(&key(&hash, "c", "id")), k);
        // A long part made of colons is bounded too.
        let colons = ":".repeat(100);
        assert!(key_part(&key(&colons, "c", "id")).len() < 80);
    }

    #[test]
    fn a_get_returns_bounded_entries() {
        let mut fields = HashMap::new();
        for i in 0..(MAX_LABELS + 5) {
            fields.insert(format!("L{i:02}").into_bytes(), vec![1; 28]);
        }
        fields.insert(vec![b'X'; MAX_LABEL_BYTES + 1], vec![1; 28]);
        fields.insert(vec![0xff, 0xfe], vec![1; 28]);
        fields.insert(Vec::new(), vec![1; 28]);
        let entries = bounded_entries(fields);
        assert_eq!(entries.len(), MAX_LABELS);
        assert_eq!(entries[0].label, "L00");
        assert!(entries.iter().all(|e| e.label.len() <= MAX_LABEL_BYTES));

        let mut big = HashMap::new();
        big.insert(b"CN_MOBILE".to_vec(), vec![0; MAX_SEALED_BYTES + 1]);
        big.insert(b"EMAIL".to_vec(), vec![0; 40]);
        let entries = bounded_entries(big);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].label, "EMAIL");
    }

    #[test]
    fn errors_name_the_failure_only() {
        let e = vault_error(SharedError::Timeout(Duration::from_millis(100)));
        assert_eq!(
            e.to_string(),
            "token vault: shared tier timed out after 100ms"
        );
        let e = vault_error(SharedError::Open);
        assert!(e.to_string().contains("circuit open"), "{e}");
        let e = vault_error(SharedError::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "io",
            "tok:acme:secret-conversation".to_string(),
        ))));
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
