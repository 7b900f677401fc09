//! The tokenisation master key as configured: 32 hex digits of a random
//! 128-bit SM4 key, refused when missing, malformed, published (the GB/T
//! 32907 example) or visibly not random. Part of the config (`moltgate
//! check` reports it at the key's place); `tokenize` derives its keys from
//! it. Nothing here prints the key: [`MasterKey`]'s `Debug` is redacted and
//! [`KeyError`] never quotes what it refused.

/// Bytes of an SM4 key.
pub const KEY_LEN: usize = 16;

/// The GB/T 32907 example key: published, so no secret.
const TEST_VECTOR_KEY: [u8; KEY_LEN] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
];
/// Fewer distinct bytes than this (of 16) is no random key: a random key
/// has fewer than 8 distinct bytes with probability below 1e-9.
const MIN_DISTINCT_BYTES: usize = 8;

/// Why a configured key was refused. Never carries the key or any part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key, or an empty one.
    #[error("tokenize.key is missing or empty: set it (or MOLTGATE_TOKEN_KEY) to 32 hex digits of a random 128-bit SM4 key, for example the output of `openssl rand -hex 16`")]
    Missing,
    /// Not 32 hex digits.
    #[error("tokenize.key must be 32 hex digits (a 128-bit SM4 key); it has {chars} character(s){what}; generate one with `openssl rand -hex 16`")]
    Format {
        /// How many characters it has.
        chars: usize,
        /// ", not all hex digits" when some are not.
        what: &'static str,
    },
    /// The published GB/T 32907 test vector key.
    #[error("tokenize.key is the published SM4 test vector key (GB/T 32907); generate a random one with `openssl rand -hex 16`")]
    TestVector,
    /// Too few distinct bytes, or an arithmetic sequence (`000102…0f`).
    #[error("tokenize.key is not random ({why}); generate one with `openssl rand -hex 16`")]
    Weak {
        /// What gave it away (counts and shapes, never bytes).
        why: String,
    },
}

/// The operator's 128-bit SM4 key, checked. Only [`Keys::derive`] reads it.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// The key's bytes, for deriving the keys of each purpose.
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses and checks a key written as 32 hex digits (spaces around it
    /// are ignored). Refuses a missing, malformed, published or
    /// non-random key.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Missing);
        }
        let chars = text.chars().count();
        let all_hex = text.chars().all(|c| c.is_ascii_hexdigit());
        if chars != 2 * KEY_LEN || !all_hex {
            let what = if all_hex { "" } else { ", not all hex digits" };
            return Err(KeyError::Format { chars, what });
        }
        let mut key = [0u8; KEY_LEN];
        hex::decode_to_slice(text, &mut key).map_err(|_| KeyError::Format {
            chars,
            what: ", not all hex digits",
        })?;
        check_random(&key)?;
        Ok(Self(key))
    }
}

/// Refuses keys no random generator produces in practice.
fn check_random(key: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    if *key == TEST_VECTOR_KEY {
        return Err(KeyError::TestVector);
    }
    let mut seen = [false; 256];
    for &b in key {
        seen[usize::from(b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < MIN_DISTINCT_BYTES {
        return Err(KeyError::Weak {
            why: format!("only {distinct} distinct byte value(s) of 16"),
        });
    }
    let step = key[1].wrapping_sub(key[0]);
    if key.windows(2).all(|w| w[1].wrapping_sub(w[0]) == step) {
        return Err(KeyError::Weak {
            why: "its bytes count up or down in equal steps".into(),
        });
    }
    Ok(())
}
