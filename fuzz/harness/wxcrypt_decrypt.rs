//! WXBizMsgCrypt (WeCom and DingTalk): `WxCrypt::decrypt` and friends.
//!
//! Fields: 0 = receive id; the body is the rest. ctl bits 2-3 pick one of the
//! four vector keys. ctl & 3:
//!   0: decrypt the body as the base64 `encrypt` field;
//!   1: round trip: encrypt(body) then decrypt gives body back; signatures
//!      verify (hex case ignored);
//!   2: the body is raw plaintext blocks (random, length, message, id and
//!      padding all under the fuzzer's control), AES-256-CBC-encrypted raw by
//!      the harness; decrypt must refuse or return exactly the framed message;
//!   3: `from_encoding_aes_key` on the body as a key.

use super::common::*;
use aes::Aes256;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::Engine;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use moltgate::platform::wxcrypt::{self, WxCrypt};

const KEYS: [&str; 4] = [
    "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt",
    "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
    "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
    "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij",
];

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// What a correct decrypt of `plain` (already unencrypted, padding included)
/// returns for `rid`.
fn expected(plain: &[u8], rid: &[u8]) -> Option<Vec<u8>> {
    let pad = usize::from(*plain.last()?);
    if pad == 0 || pad > 32 || pad > plain.len() {
        return None;
    }
    let (body, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&b| usize::from(b) != pad) || body.len() < 20 {
        return None;
    }
    let len = u32::from_be_bytes(body[16..20].try_into().ok()?) as usize;
    let rest = &body[20..];
    if len > rest.len() || &rest[len..] != rid {
        return None;
    }
    Some(rest[..len].to_vec())
}

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 1) else {
        return;
    };
    let key = KEYS[usize::from((inp.ctl >> 2) & 3)];
    let crypt = WxCrypt::from_encoding_aes_key(key).unwrap();
    let rid = inp.text(0);
    match inp.ctl & 3 {
        0 => {
            let _ = crypt.decrypt(&String::from_utf8_lossy(inp.body), &rid);
        }
        1 => {
            let random = [inp.ctl; 16];
            let enc = crypt.encrypt(inp.body, &rid, &random);
            assert_eq!(crypt.decrypt(&enc, &rid).unwrap(), inp.body);
            let sig = wxcrypt::msg_signature(&rid, "1409659813", "1372623149", &enc);
            assert!(wxcrypt::verify_signature(
                &rid,
                "1409659813",
                "1372623149",
                &enc,
                &sig
            ));
            assert!(wxcrypt::verify_signature(
                &rid,
                "1409659813",
                "1372623149",
                &enc,
                &sig.to_uppercase()
            ));
        }
        2 => {
            let n = inp.body.len() / 16 * 16;
            if n == 0 {
                return;
            }
            let plain = &inp.body[..n];
            let raw_key = LENIENT.decode(format!("{key}=")).unwrap();
            let ct = cbc::Encryptor::<Aes256>::new_from_slices(&raw_key, &raw_key[..16])
                .unwrap()
                .encrypt_padded_vec_mut::<NoPadding>(plain);
            let got = crypt.decrypt(&STANDARD.encode(&ct), &rid).ok();
            assert_eq!(got, expected(plain, rid.as_bytes()));
        }
        _ => {
            if let Ok(c) = WxCrypt::from_encoding_aes_key(&String::from_utf8_lossy(inp.body)) {
                let enc = c.encrypt(b"hello", &rid, &[0; 16]);
                assert_eq!(c.decrypt(&enc, &rid).unwrap(), b"hello");
            }
        }
    }
}
