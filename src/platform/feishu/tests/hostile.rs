//! Hostile input: a request whose signature fails is never decrypted or
//! parsed, every unauthenticated failure answers alike (no padding oracle),
//! and malformed input after authentication keeps its precise 400.

use super::*;

/// A ciphertext that is base64 and whole blocks, but whose padding is
/// invalid: one block of zeros (a last byte of 0 is never PKCS#7).
fn bad_padding(key: &str) -> String {
    use cbc::cipher::block_padding::NoPadding;
    let iv = [7u8; 16];
    let enc = cbc::Encryptor::<Aes256>::new(&aes_key(key).into(), &iv.into());
    let mut raw = iv.to_vec();
    raw.extend_from_slice(&enc.encrypt_padded_vec_mut::<NoPadding>(&[0u8; 16]));
    STANDARD.encode(raw)
}

thread_local! {
    /// Calls of [`decrypt`] on this thread, so tests can prove that a
    /// request which fails authentication is never decrypted.
    pub(in crate::platform::feishu) static DECRYPTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn decrypts() -> usize {
    DECRYPTS.with(std::cell::Cell::get)
}

/// Bodies an attacker could send, from a valid envelope to garbage.
fn hostile_bodies() -> Vec<(&'static str, String)> {
    let event = v2_message("hi", "p2p", "", "user").to_string();
    let challenge =
        json!({ "challenge": "c", "token": TOKEN, "type": "url_verification" }).to_string();
    let wrap = |enc: String| json!({ "encrypt": enc }).to_string();
    vec![
        (
            "valid envelope",
            wrap(encrypt(KEY, event.as_bytes(), &[1; 16])),
        ),
        (
            "valid challenge",
            wrap(encrypt(KEY, challenge.as_bytes(), &[2; 16])),
        ),
        ("not base64", wrap("%%% not base64 %%%".into())),
        ("bad length", wrap(STANDARD.encode([9u8; 40]))),
        ("bad padding", wrap(bad_padding(KEY))),
        (
            "not JSON inside",
            wrap(encrypt(KEY, b"{not json", &[3; 16])),
        ),
        ("plain event", event),
        ("not JSON", "{garbage".into()),
    ]
}

/// A request whose signature fails is never decrypted, nor parsed: a
/// forged envelope, a ciphertext that is not base64 or has bad padding
/// and garbage get exactly the rejection of a valid body with a bad
/// signature. So do they with a correct signature that is stale.
#[test]
fn a_failed_signature_is_never_decrypted() {
    let a = adapter(Some(KEY));
    let t0 = 1_700_000_000;
    assert_eq!(
        decrypt(KEY, &bad_padding(KEY)),
        Err(Rejection::Decrypt("bad padding"))
    );
    for (what, body) in hostile_bodies() {
        let before = decrypts();
        let forged = signed_headers(&t0.to_string(), "n", "guessed key", body.as_bytes());
        assert_eq!(
            a.receive(&post(&forged, body.as_bytes(), at(t0)))
                .unwrap_err(),
            Rejection::BadSignature("X-Lark-Signature"),
            "{what}"
        );
        let mut tampered = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
        tampered.insert(H_NONCE, HeaderValue::from_static("other"));
        assert_eq!(
            a.receive(&post(&tampered, body.as_bytes(), at(t0)))
                .unwrap_err(),
            Rejection::BadSignature("X-Lark-Signature"),
            "{what}"
        );
        let stale = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
        assert_eq!(
            a.receive(&post(&stale, body.as_bytes(), at(t0 + 301)))
                .unwrap_err()
                .kind(),
            "stale_timestamp",
            "{what}"
        );
        let mut no_ts = stale.clone();
        no_ts.remove(H_TIMESTAMP);
        assert_eq!(
            a.receive(&post(&no_ts, body.as_bytes(), at(t0)))
                .unwrap_err(),
            Rejection::Missing("X-Lark-Request-Timestamp").unverified(),
            "{what}"
        );
        assert!(a.payload(&post(&forged, body.as_bytes(), at(t0))).is_err());
        assert_eq!(decrypts(), before, "{what}: decrypted before verifying");
    }
}

/// Every way a request fails to authenticate answers the same status,
/// code and message (no padding oracle, no probing one check at a
/// time); only `kind`, for the audit line and metric, tells them apart.
#[test]
fn every_unauthenticated_failure_answers_alike() {
    let keyed = adapter(Some(KEY));
    let plain = adapter(None);
    let t0 = 1_700_000_000;
    let unsigned = HeaderMap::new();
    let mut failures: Vec<(String, Rejection)> = Vec::new();
    for (what, body) in hostile_bodies() {
        let forged = signed_headers(&t0.to_string(), "n", "guessed", body.as_bytes());
        let stale = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
        for (how, h, now) in [
            ("forged", &forged, t0),
            ("stale", &stale, t0 + 3600),
            ("unsigned", &unsigned, t0),
        ] {
            match keyed.receive(&post(h, body.as_bytes(), at(now))) {
                Err(r) => failures.push((format!("{how} {what}"), r)),
                Ok(_) => assert_eq!((how, what), ("unsigned", "valid challenge")),
            }
        }
    }
    // Unsigned challenges that do not decrypt to a good one.
    let wrong_token = json!({ "challenge": "c", "token": "nope", "type": "url_verification" });
    let no_token = json!({ "challenge": "c", "type": "url_verification" });
    for inner in [wrong_token, no_token] {
        let body =
            json!({ "encrypt": encrypt(KEY, inner.to_string().as_bytes(), &[4; 16]) }).to_string();
        let r = keyed.receive(&post(&unsigned, body.as_bytes(), at(t0)));
        failures.push((format!("unsigned {inner}"), r.unwrap_err()));
    }
    // Signed correctly, but the envelope does not decrypt.
    let body = json!({ "encrypt": bad_padding(KEY) }).to_string();
    let h = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
    let r = keyed.receive(&post(&h, body.as_bytes(), at(t0)));
    failures.push(("signed bad padding".into(), r.unwrap_err()));
    // Token routes: wrong or missing token, an envelope, garbage.
    let mut wrong = v2_message("hi", "p2p", "", "user");
    wrong["header"]["token"] = json!("nope");
    let mut missing = v2_message("hi", "p2p", "", "user");
    missing["header"].as_object_mut().unwrap().remove("token");
    let envelope = json!({ "encrypt": bad_padding(KEY) });
    for body in [
        wrong.to_string(),
        missing.to_string(),
        envelope.to_string(),
        "{garbage".into(),
        "[1]".into(),
    ] {
        let r = plain.receive(&post(&unsigned, body.as_bytes(), at(t0)));
        failures.push((format!("token route {body}"), r.unwrap_err()));
    }
    let mut kinds = std::collections::BTreeSet::new();
    for (what, r) in &failures {
        assert!(r.is_unauthenticated(), "{what}: {r:?}");
        assert_eq!(r.status(), http::StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(r.public_kind(), "unauthenticated", "{what}");
        assert_eq!(
            r.public_message(),
            "the request could not be authenticated",
            "{what}"
        );
        kinds.insert(r.kind());
    }
    // The audit line still tells them apart.
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "bad_signature",
            "decrypt_failed",
            "malformed",
            "missing_field",
            "stale_timestamp"
        ]
    );
    // The padding oracle: an unsigned envelope with bad padding and
    // one that decrypts (to something other than a challenge) are
    // refused identically to the client.
    let oracle = |enc: String| {
        let body = json!({ "encrypt": enc }).to_string();
        let r = keyed
            .receive(&post(&unsigned, body.as_bytes(), at(t0)))
            .unwrap_err();
        (r.status(), r.public_kind(), r.public_message())
    };
    let event = v2_message("hi", "p2p", "", "user").to_string();
    assert_eq!(
        oracle(bad_padding(KEY)),
        oracle(encrypt(KEY, event.as_bytes(), &[1; 16]))
    );
    assert_eq!(
        oracle(bad_padding(KEY)),
        oracle(encrypt(KEY, b"{not json", &[1; 16]))
    );
}

/// Authenticated but malformed input keeps its precise 400.
#[test]
fn malformed_after_authentication_stays_400() {
    let a = adapter(Some(KEY));
    let t0 = 1_700_000_000;
    for body in ["{not json", "[1,2]", "{\"encrypt\":5}"] {
        let h = signed_headers(&t0.to_string(), "n", KEY, body.as_bytes());
        let r = a.receive(&post(&h, body.as_bytes(), at(t0))).unwrap_err();
        assert_eq!(
            (r.status(), r.public_kind()),
            (http::StatusCode::BAD_REQUEST, "malformed"),
            "{body}"
        );
    }
}
