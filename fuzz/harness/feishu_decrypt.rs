//! Feishu / Lark `encrypt` field cipher: `feishu::decrypt`.
//!
//! Fields: 0 = encrypt_key; the body is the rest.
//! ctl & 3 == 0: decrypt the body as the base64 `encrypt` field;
//! 1: round trip: encrypt(body) with the IV from ctl, decrypt must give body back;
//! 2: the body is IV || plaintext blocks (padding included, under the
//!    fuzzer's control), AES-256-CBC-encrypted raw by the harness; decrypt must
//!    either refuse or return exactly the PKCS#7-unpadded plaintext;
//! 3: decrypt the body with the vector key "test key".

use super::common::*;
use aes::Aes256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use moltgate::platform::feishu;
use sha2::{Digest, Sha256};

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 1) else {
        return;
    };
    let key = inp.text(0);
    match inp.ctl & 3 {
        0 => {
            let _ = feishu::decrypt(&key, &String::from_utf8_lossy(inp.body));
        }
        1 => {
            let iv = [inp.ctl; 16];
            let enc = feishu::encrypt(&key, inp.body, &iv);
            assert_eq!(feishu::decrypt(&key, &enc).unwrap(), inp.body);
        }
        2 => {
            let n = inp.body.len() / 16 * 16;
            if n < 32 {
                return;
            }
            let (iv, pt) = inp.body[..n].split_at(16);
            let k: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            let ct = cbc::Encryptor::<Aes256>::new_from_slices(&k, iv)
                .unwrap()
                .encrypt_padded_vec_mut::<NoPadding>(pt);
            let mut raw = iv.to_vec();
            raw.extend_from_slice(&ct);
            let got = feishu::decrypt(&key, &STANDARD.encode(&raw));
            let pad = usize::from(pt[pt.len() - 1]);
            let valid = (1..=16).contains(&pad)
                && pt[pt.len() - pad..].iter().all(|&b| usize::from(b) == pad);
            match got {
                Ok(v) => {
                    assert!(valid, "accepted bad padding");
                    assert_eq!(v, &pt[..pt.len() - pad]);
                }
                Err(_) => assert!(!valid, "refused valid padding"),
            }
        }
        _ => {
            let _ = feishu::decrypt("test key", &String::from_utf8_lossy(inp.body));
        }
    }
}
