//! The cryptography of tokenisation: the operator's SM4 key, the two keys
//! derived from it, the keyed hash behind token ids, and SM4-GCM for the
//! vault.
//!
//! **Why these primitives.** The product brief asks for the Chinese national
//! ciphers. SM4 (GB/T 32907) is RustCrypto's `sm4` block cipher; GCM over it
//! is `aes-gcm`'s `AesGcm<Sm4, U12>` (the crate's GCM is generic over any
//! 128-bit block cipher; SM4-GCM is RFC 8998's `TLS_SM4_GCM_SM3` mode).
//!
//! **Keyed hash: HMAC-SM3, not SM4-CMAC.** One primitive does both jobs
//! that need a PRF: key derivation (labels of any length in, 256 bits out)
//! and token ids (tenant, type and value of any length in). HMAC-SM3 is
//! GB/T 15852.2's HMAC over GB/T 32905's SM3, needs no extra crate beyond
//! `sm3` (`hmac` is already a dependency), and its 256-bit output leaves
//! room for a longer id later. CMAC would add a crate and a 128-bit output
//! for no gain.
//!
//! **Two keys from one.** The configured 128-bit key is never used directly.
//! HKDF-Expand (RFC 5869, one block) with HMAC-SM3 and a label per purpose
//! gives the id key and the vault's SM4-GCM key, so a token id (public: the
//! model sees it) reveals nothing about the encryption key, and neither key
//! serves two purposes. The configured key is uniformly random (it is
//! checked for the obvious failures below), so it serves as HKDF's PRK.
//!
//! Nothing here prints a key or a value: [`Keys`] and [`MasterKey`] have
//! `Debug` implementations that say only that they are redacted, and
//! [`KeyError`] never quotes what it refused.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::AesGcm;
use hmac::{Hmac, Mac};
use sm3::Sm3;
use sm4::Sm4;

/// SM4 in Galois/Counter mode with a 96-bit nonce.
pub type Sm4Gcm = AesGcm<Sm4, U12>;

pub use crate::config::token_key::{KeyError, MasterKey, KEY_LEN};
/// Bytes of an SM4-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of an SM4-GCM tag.
pub const TAG_LEN: usize = 16;

/// The keys derived from the [`MasterKey`]: one per purpose.
#[derive(Clone)]
pub struct Keys {
    /// HMAC-SM3 key of token ids.
    id: [u8; 32],
    /// SM4-GCM key of the vault.
    vault: Sm4Gcm,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

/// Why a sealed value did not open: tampered with, sealed for another
/// tenant, conversation or token (the associated data differs), or under
/// another key. Deliberately says no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed value does not authenticate")]
pub struct OpenError;

impl Keys {
    /// HKDF-Expand with HMAC-SM3: `T(1) = HMAC-SM3(key, label || 0x01)`.
    pub fn derive(master: &MasterKey) -> Self {
        let id = hmac_sm3(master.bytes(), &[b"moltgate tokenize v1: token id", &[1]]);
        let enc = hmac_sm3(
            master.bytes(),
            &[b"moltgate tokenize v1: vault SM4-GCM", &[1]],
        );
        let mut vault_key = [0u8; KEY_LEN];
        vault_key.copy_from_slice(&enc[..KEY_LEN]);
        Self {
            id,
            vault: Sm4Gcm::new(&vault_key.into()),
        }
    }

    /// HMAC-SM3 under the id key of `parts`, each length-prefixed (so
    /// `("ab", "c")` and `("a", "bc")` differ).
    pub fn id_mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let framed: Vec<[u8; 4]> = parts.iter().map(|p| len32(p.len())).collect();
        let mut all: Vec<&[u8]> = Vec::with_capacity(2 * parts.len());
        for (len, part) in framed.iter().zip(parts) {
            all.push(len);
            all.push(part);
        }
        hmac_sm3(&self.id, &all)
    }

    /// Encrypts `value` under a fresh random nonce, authenticating `aad`:
    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, value: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let payload = Payload { msg: value, aad };
        // GCM fails only for messages over 64 GiB, which never reach here
        // (a DLP finding is a few hundred bytes at most): an empty result
        // then opens as nothing, the safe direction.
        let sealed = self
            .vault
            .encrypt(&nonce.into(), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts what [`Self::seal`] made with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        self.vault
            .decrypt(&n.into(), Payload { msg: body, aad })
            .map_err(|_| OpenError)
    }
}

/// A length as 4 big-endian bytes (saturating: no part is 4 GiB).
fn len32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

/// Length-prefixed concatenation: the associated data of a vault entry.
pub fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        out.extend_from_slice(&len32(p.len()));
        out.extend_from_slice(p);
    }
    out
}

/// HMAC-SM3 of the concatenation of `parts` under a key of at most 64
/// bytes (SM3's block), zero-padded to the block as HMAC itself does, so
/// no fallible length check is needed.
pub fn hmac_sm3(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    let n = key.len().min(64);
    block[..n].copy_from_slice(&key[..n]);
    let mut mac = <Hmac<Sm3> as KeyInit>::new(&block.into());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm4::cipher::{BlockDecrypt, BlockEncrypt};

    const VECTOR: &str = "0123456789abcdeffedcba9876543210";

    /// GB/T 32907-2016 appendix A, example 1: key = plaintext.
    #[test]
    fn sm4_gbt32907_vector() {
        let key: [u8; 16] = hex::decode(VECTOR).unwrap().try_into().unwrap();
        let cipher = Sm4::new(&key.into());
        let mut block = key.into();
        cipher.encrypt_block(&mut block);
        assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
        cipher.decrypt_block(&mut block);
        assert_eq!(hex::encode(block), VECTOR);
    }

    /// GB/T 32905-2016 appendix A, example 1: SM3("abc").
    #[test]
    fn sm3_gbt32905_vector() {
        use sm3::Digest;
        assert_eq!(
            hex::encode(Sm3::digest(b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    fn keys() -> Keys {
        Keys::derive(&MasterKey::parse("8f1c2ab9d07e4e55b61c93a07f2d3e11").unwrap())
    }

    #[test]
    fn gcm_round_trip_and_tamper() {
        let k = keys();
        let sealed = k.seal(b"13812345678", b"aad");
        assert_eq!(sealed.len(), NONCE_LEN + 11 + TAG_LEN);
        assert_eq!(k.open(&sealed, b"aad").unwrap(), b"13812345678");
        // Fresh nonce every time.
        assert_ne!(sealed, k.seal(b"13812345678", b"aad"));
        assert_eq!(k.open(&sealed, b"other aad"), Err(OpenError));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(k.open(&bad, b"aad"), Err(OpenError), "byte {i} flipped");
        }
        assert_eq!(k.open(&sealed[..20], b"aad"), Err(OpenError));
        let other = Keys::derive(&MasterKey::parse("5b9e0c47a1d2f3e8c6b7a09182736455").unwrap());
        assert_eq!(other.open(&sealed, b"aad"), Err(OpenError));
    }

    #[test]
    fn derived_keys_differ_from_each_other_and_the_master() {
        let master = MasterKey::parse("8f1c2ab9d07e4e55b61c93a07f2d3e11").unwrap();
        let k = Keys::derive(&master);
        let enc = hmac_sm3(
            master.bytes(),
            &[b"moltgate tokenize v1: vault SM4-GCM", &[1]],
        );
        assert_ne!(k.id[..16], enc[..16]);
        assert_ne!(k.id[..16], *master.bytes());
        assert_ne!(enc[..16], *master.bytes());
    }

    #[test]
    fn weak_keys_are_refused() {
        assert_eq!(MasterKey::parse("").unwrap_err(), KeyError::Missing);
        assert_eq!(MasterKey::parse("  ").unwrap_err(), KeyError::Missing);
        assert!(matches!(
            MasterKey::parse("abc").unwrap_err(),
            KeyError::Format { chars: 3, .. }
        ));
        assert!(matches!(
            MasterKey::parse("zz1c2ab9d07e4e55b61c93a07f2d3e11").unwrap_err(),
            KeyError::Format { chars: 32, .. }
        ));
        assert_eq!(MasterKey::parse(VECTOR).unwrap_err(), KeyError::TestVector);
        assert_eq!(
            MasterKey::parse(&VECTOR.to_uppercase()).unwrap_err(),
            KeyError::TestVector
        );
        for weak in [
            "00000000000000000000000000000000",
            "41414141414141414141414141414141",
            "0102030401020304010203040102030a",
            "000102030405060708090a0b0c0d0e0f",
            "ffeeddccbbaa99887766554433221100",
        ] {
            let e = MasterKey::parse(weak).unwrap_err();
            assert!(matches!(e, KeyError::Weak { .. }), "{weak}: {e:?}");
        }
        assert!(MasterKey::parse(" 8f1c2ab9d07e4e55b61c93a07f2d3e11\n").is_ok());
    }

    #[test]
    fn errors_and_debug_never_show_the_key() {
        let secret = "8f1c2ab9d07e4e55b61c93a07f2d3e11";
        let m = MasterKey::parse(secret).unwrap();
        let k = Keys::derive(&m);
        for shown in [format!("{m:?}"), format!("{k:?}")] {
            assert!(!shown.contains("8f1c"), "{shown}");
        }
        for bad in [&secret[..31], "8f1c2ab9d07e4e55b61c93a07f2d3e1g", VECTOR] {
            let e = MasterKey::parse(bad).unwrap_err();
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(!shown.contains(&bad[..6]), "{shown}");
            }
        }
    }
}
