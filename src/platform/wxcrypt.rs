//! The message cipher WeCom and DingTalk share ("WXBizMsgCrypt").
//!
//! Both platforms encrypt callbacks with AES-256-CBC, the IV being the first
//! 16 key bytes, PKCS#7 padding to a multiple of **32** (not the AES block
//! size), and a plaintext framed as `random(16) | u32 BE length | msg |
//! receive_id`. Both sign with a SHA-1 over the sorted
//! `[token, timestamp, nonce, encrypt]`. One implementation serves both so a
//! fix to the framing or padding checks lands on both platforms at once.

use aes::Aes256;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::Engine;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand::Rng;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::adapter::Rejection;

/// Padding block of the scheme: 32, although AES blocks are 16 bytes.
const PAD_BLOCK: usize = 32;
/// Bytes before the message: 16 random bytes and a 4-byte length.
const HEADER_LEN: usize = 20;

/// Key material decodes with the last base64 digit's unused bits ignored,
/// because the platforms generate 43-character keys without caring whether
/// those bits are zero (DingTalk's published example key has them set).
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Why a WXBizMsgCrypt operation failed. Messages carry no key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WxCryptError {
    /// The configured key is not 43 base64 characters decoding to 32 bytes.
    #[error("the AES key must be 43 base64 characters (32 bytes)")]
    BadKey,
    /// The ciphertext is not valid base64.
    #[error("ciphertext is not base64")]
    Base64,
    /// The ciphertext is empty or not whole AES blocks.
    #[error("ciphertext length is not a multiple of the block size")]
    Length,
    /// The PKCS#7 padding is invalid.
    #[error("bad padding")]
    Padding,
    /// The plaintext is shorter than its declared length.
    #[error("plaintext is truncated")]
    Truncated,
    /// The trailing receive id is not the configured one.
    #[error("receive id does not match")]
    ReceiveId,
}

impl From<WxCryptError> for Rejection {
    fn from(e: WxCryptError) -> Self {
        Rejection::Decrypt(match e {
            WxCryptError::BadKey => "bad key",
            WxCryptError::Base64 => "ciphertext is not base64",
            WxCryptError::Length => "bad ciphertext length",
            WxCryptError::Padding => "bad padding",
            WxCryptError::Truncated => "truncated plaintext",
            WxCryptError::ReceiveId => "receive id does not match",
        })
    }
}

/// An AES key for the WXBizMsgCrypt scheme.
#[derive(Clone)]
pub struct WxCrypt {
    key: [u8; 32],
}

impl std::fmt::Debug for WxCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WxCrypt { key: <redacted> }")
    }
}

impl WxCrypt {
    /// Builds the cipher from the platform's 43-character `EncodingAESKey`.
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<Self, WxCryptError> {
        if encoding_aes_key.len() != 43 {
            return Err(WxCryptError::BadKey);
        }
        let raw = LENIENT_B64
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| WxCryptError::BadKey)?;
        let key: [u8; 32] = raw.try_into().map_err(|_| WxCryptError::BadKey)?;
        Ok(Self { key })
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.key[..16]);
        iv
    }

    /// Encrypts `msg` for `receive_id`; `random` is the 16-byte prefix
    /// (fresh random bytes in production, fixed in tests to match vectors).
    pub fn encrypt(&self, msg: &[u8], receive_id: &str, random: &[u8; 16]) -> String {
        let mut plain = Vec::with_capacity(HEADER_LEN + msg.len() + receive_id.len() + PAD_BLOCK);
        plain.extend_from_slice(random);
        // Callback bodies are far below 4 GiB; saturating keeps this total.
        plain.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
        plain.extend_from_slice(msg);
        plain.extend_from_slice(receive_id.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        plain.resize(plain.len() + pad, pad as u8);
        let enc = cbc::Encryptor::<Aes256>::new(&self.key.into(), &self.iv().into());
        STANDARD.encode(enc.encrypt_padded_vec_mut::<NoPadding>(&plain))
    }

    /// Decrypts a base64 `encrypt` field and checks that its trailing receive
    /// id equals `receive_id`; returns the message bytes. Callers verify the
    /// `msg_signature` over `encrypt` first: every outcome here (bad base64,
    /// length, padding, receive id) must be answered like a bad signature,
    /// or the answers are a padding oracle.
    pub fn decrypt(&self, encrypt: &str, receive_id: &str) -> Result<Vec<u8>, WxCryptError> {
        #[cfg(test)]
        DECRYPTS.with(|n| n.set(n.get() + 1));
        let raw = STANDARD
            .decode(encrypt.trim())
            .map_err(|_| WxCryptError::Base64)?;
        if raw.is_empty() || raw.len() % 16 != 0 {
            return Err(WxCryptError::Length);
        }
        let dec = cbc::Decryptor::<Aes256>::new(&self.key.into(), &self.iv().into());
        let plain = dec
            .decrypt_padded_vec_mut::<NoPadding>(&raw)
            .map_err(|_| WxCryptError::Length)?;
        let pad = usize::from(*plain.last().ok_or(WxCryptError::Padding)?);
        if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
            return Err(WxCryptError::Padding);
        }
        let (body, padding) = plain.split_at(plain.len() - pad);
        if padding.iter().any(|&b| usize::from(b) != pad) {
            return Err(WxCryptError::Padding);
        }
        let len_bytes: [u8; 4] = body
            .get(16..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(WxCryptError::Truncated)?;
        let msg_len =
            usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| WxCryptError::Truncated)?;
        let rest = body.get(HEADER_LEN..).ok_or(WxCryptError::Truncated)?;
        if msg_len > rest.len() {
            return Err(WxCryptError::Truncated);
        }
        let (msg, id) = rest.split_at(msg_len);
        if !bool::from(id.ct_eq(receive_id.as_bytes())) {
            return Err(WxCryptError::ReceiveId);
        }
        Ok(msg.to_vec())
    }
}

/// `msg_signature`: hex SHA-1 over the sorted, concatenated four values.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    let mut parts = [token, timestamp, nonce, encrypt];
    parts.sort_unstable();
    let mut h = Sha1::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Checks a received `msg_signature` in constant time (hex case ignored).
pub fn verify_signature(
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
    signature: &str,
) -> bool {
    let expected = msg_signature(token, timestamp, nonce, encrypt);
    let given = signature.trim().to_ascii_lowercase();
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// A fresh 16-byte plaintext prefix.
pub fn random_prefix() -> [u8; 16] {
    rand::thread_rng().gen()
}

/// A fresh numeric nonce, as the platforms' own SDKs generate.
pub fn random_nonce() -> String {
    rand::thread_rng()
        .gen_range(100_000_000u32..1_000_000_000)
        .to_string()
}

#[cfg(test)]
thread_local! {
    /// Calls of [`WxCrypt::decrypt`] on this thread, so tests can prove that
    /// a request which fails its signature is never decrypted.
    pub(crate) static DECRYPTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many times [`WxCrypt::decrypt`] ran on this thread (tests).
#[cfg(test)]
pub(crate) fn decrypts() -> usize {
    DECRYPTS.with(std::cell::Cell::get)
}

#[cfg(test)]
pub(crate) fn vectors() -> serde_json::Value {
    let path = std::env::var("MOLTGATE_VECTORS").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/vectors/platforms.json"
        )
        .to_string()
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).expect("vectors are JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s<'a>(v: &'a serde_json::Value, ptr: &str) -> &'a str {
        v.pointer(ptr)
            .and_then(|x| x.as_str())
            .unwrap_or_else(|| panic!("vector {ptr}"))
    }

    #[test]
    fn wecom_official_sample_both_directions() {
        let v = vectors();
        let c = WxCrypt::from_encoding_aes_key(s(&v, "/wecom/official_sample/encoding_aes_key"))
            .unwrap();
        let corp = s(&v, "/wecom/official_sample/corp_id");
        let token = s(&v, "/wecom/official_sample/token");
        for case in ["verify_url", "message"] {
            let p = format!("/wecom/official_sample/{case}");
            let enc = s(
                &v,
                &format!(
                    "{p}/{}",
                    if case == "verify_url" {
                        "echostr"
                    } else {
                        "encrypt"
                    }
                ),
            );
            let ts = s(&v, &format!("{p}/timestamp"));
            let nonce = s(&v, &format!("{p}/nonce"));
            let sig = s(&v, &format!("{p}/msg_signature"));
            assert_eq!(msg_signature(token, ts, nonce, enc), sig);
            assert!(verify_signature(token, ts, nonce, enc, sig));
            assert!(verify_signature(token, ts, nonce, enc, &sig.to_uppercase()));
            assert!(!verify_signature(token, ts, "1", enc, sig));
            let want = s(
                &v,
                &format!(
                    "{p}/{}",
                    if case == "verify_url" {
                        "reply"
                    } else {
                        "plaintext"
                    }
                ),
            );
            let msg = c.decrypt(enc, corp).unwrap();
            assert_eq!(std::str::from_utf8(&msg).unwrap(), want);
            // The other direction: our ciphertext decrypts to the same message.
            let again = c.encrypt(&msg, corp, &random_prefix());
            assert_eq!(c.decrypt(&again, corp).unwrap(), msg);
            assert_eq!(c.decrypt(enc, "wrong"), Err(WxCryptError::ReceiveId));
        }
    }

    #[test]
    fn wecom_legacy_sample() {
        let v = vectors();
        let p = "/wecom/legacy_sample";
        let c = WxCrypt::from_encoding_aes_key(s(&v, &format!("{p}/encoding_aes_key"))).unwrap();
        let corp = s(&v, &format!("{p}/corp_id"));
        let token = s(&v, &format!("{p}/token"));
        let vu = format!("{p}/verify_url");
        let echostr = s(&v, &format!("{vu}/echostr"));
        assert_eq!(
            msg_signature(
                token,
                s(&v, &format!("{vu}/timestamp")),
                s(&v, &format!("{vu}/nonce")),
                echostr
            ),
            s(&v, &format!("{vu}/msg_signature"))
        );
        assert_eq!(
            c.decrypt(echostr, corp).unwrap(),
            s(&v, &format!("{vu}/reply")).as_bytes()
        );
        let m = format!("{p}/message");
        let enc = s(&v, &format!("{m}/encrypt"));
        assert_eq!(
            msg_signature(
                token,
                s(&v, &format!("{m}/timestamp")),
                s(&v, &format!("{m}/nonce")),
                enc
            ),
            s(&v, &format!("{m}/msg_signature"))
        );
        let plain = String::from_utf8(c.decrypt(enc, corp).unwrap()).unwrap();
        for part in v
            .pointer(&format!("{m}/plaintext_contains"))
            .unwrap()
            .as_array()
            .unwrap()
        {
            assert!(plain.contains(part.as_str().unwrap()), "{part}");
        }
    }

    #[test]
    fn wecom_encrypt_reply_vector_byte_for_byte() {
        let v = vectors();
        let p = "/wecom/encrypt_reply";
        let c = WxCrypt::from_encoding_aes_key(s(&v, &format!("{p}/encoding_aes_key"))).unwrap();
        let random: [u8; 16] = s(&v, &format!("{p}/random")).as_bytes().try_into().unwrap();
        let corp = s(&v, &format!("{p}/corp_id"));
        let enc = c.encrypt(s(&v, &format!("{p}/reply_xml")).as_bytes(), corp, &random);
        assert_eq!(enc, s(&v, &format!("{p}/encrypt")));
        let sig = msg_signature(
            s(&v, &format!("{p}/token")),
            s(&v, &format!("{p}/timestamp")),
            s(&v, &format!("{p}/nonce")),
            &enc,
        );
        assert_eq!(sig, s(&v, &format!("{p}/msg_signature")));
        assert_eq!(
            c.decrypt(&enc, corp).unwrap(),
            s(&v, &format!("{p}/reply_xml")).as_bytes()
        );
    }

    #[test]
    fn dingtalk_event_crypto_vector() {
        let v = vectors();
        let p = "/dingtalk/event_crypto";
        let c = WxCrypt::from_encoding_aes_key(s(&v, &format!("{p}/aes_key"))).unwrap();
        let enc = s(&v, &format!("{p}/encrypt"));
        assert_eq!(
            msg_signature(
                s(&v, &format!("{p}/token")),
                s(&v, &format!("{p}/timestamp")),
                s(&v, &format!("{p}/nonce")),
                enc
            ),
            s(&v, &format!("{p}/signature"))
        );
        let owner = s(&v, &format!("{p}/owner_key"));
        assert_eq!(
            c.decrypt(enc, owner).unwrap(),
            s(&v, &format!("{p}/plaintext")).as_bytes()
        );
    }

    #[test]
    fn hostile_ciphertexts_are_errors_not_panics() {
        let c =
            WxCrypt::from_encoding_aes_key("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").unwrap();
        assert_eq!(c.decrypt("", "x"), Err(WxCryptError::Length));
        assert_eq!(c.decrypt("!!!not base64", "x"), Err(WxCryptError::Base64));
        assert_eq!(c.decrypt("QUJD", "x"), Err(WxCryptError::Length));
        let good = c.encrypt(b"hello", "corp", &[7; 16]);
        // Truncated base64 and truncated blocks.
        assert!(c.decrypt(&good[..good.len() - 3], "corp").is_err());
        let raw = STANDARD.decode(&good).unwrap();
        assert!(c
            .decrypt(&STANDARD.encode(&raw[..raw.len() - 16]), "corp")
            .is_err());
        // Well-formed blocks with bad padding or a lying length field.
        let enc = cbc::Encryptor::<Aes256>::new(&c.key.into(), &c.iv().into());
        let mut bad_pad = vec![0u8; 64];
        bad_pad[63] = 33;
        let ct = STANDARD.encode(enc.clone().encrypt_padded_vec_mut::<NoPadding>(&bad_pad));
        assert_eq!(c.decrypt(&ct, ""), Err(WxCryptError::Padding));
        let mut lying = vec![0u8; 64];
        lying[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        lying[32..].fill(32);
        let ct = STANDARD.encode(enc.encrypt_padded_vec_mut::<NoPadding>(&lying));
        assert_eq!(c.decrypt(&ct, ""), Err(WxCryptError::Truncated));
        // Random garbage of every block length never panics.
        for n in 1..8 {
            let junk: Vec<u8> = (0..n * 16).map(|_| rand::random()).collect();
            let _ = c.decrypt(&STANDARD.encode(junk), "corp");
        }
        assert_eq!(
            WxCrypt::from_encoding_aes_key("short").unwrap_err(),
            WxCryptError::BadKey
        );
        assert!(WxCrypt::from_encoding_aes_key(&"*".repeat(43)).is_err());
    }

    #[test]
    fn empty_and_block_sized_messages_round_trip() {
        let c =
            WxCrypt::from_encoding_aes_key("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C").unwrap();
        for n in [0usize, 1, 11, 12, 13, 31, 32, 33, 100] {
            let msg = vec![b'a'; n];
            let ct = c.encrypt(&msg, "corp", &random_prefix());
            assert_eq!(STANDARD.decode(&ct).unwrap().len() % 32, 0);
            assert_eq!(c.decrypt(&ct, "corp").unwrap(), msg);
        }
        assert!(random_nonce().len() == 9);
    }
}
