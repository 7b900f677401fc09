//! JWT verification of the generic API: `JwtVerifier::verify` and the
//! `JwtBearer` the message path hands to adapters.
//!
//! Input: `ctl: u8 | rest`. `ctl & 3` picks the verifier:
//! 0 HS256 with issuer and audience (as shipped, with a strong secret),
//! 1 HS256 without issuer or audience, 2 EdDSA from a PEM public key,
//! 3 EdDSA from a JWKS (key id `k1`). `(ctl >> 2) & 7` picks the mode:
//!
//! | mode | token |
//! |---|---|
//! | 0 | `rest` is the whole `Authorization` value |
//! | 1 | `Bearer <rest>` |
//! | 2 | `rest` is the claims part, raw bytes, signed by the harness with the right key |
//! | 3 | `rest` as a JSON object (else `{"sub": rest}`), with `exp`, `iss`, `aud` set valid and `nbf` removed, signed with the right key |
//! | 4 | `rest` = header NUL claims: a fuzzed header over mode 3's claims, signed with the right key for the verifier's algorithm |
//! | 5 | mode 3's claims signed with a different key |
//! | 6 | mode 3's claims under `{"alg":"none"}`, signature empty or fuzzed |
//! | 7 | algorithm confusion: HS256 keyed with the public key's PEM / JWKS text, or EdDSA against an HS verifier |
//!
//! `ctl` bit 5 writes the scheme as `bearer` with extra spaces.
//!
//! Properties: nothing panics; modes 5-7 are always refused; an accepted
//! token carries a non-empty subject id, is `header.claims.signature` whose
//! signature verifies under the harness's own reference (HMAC-SHA256 or
//! Ed25519) for the verifier's only algorithm, whose `exp` has not passed and
//! whose `nbf` has come (with the leeway), and whose subject matches its
//! claims; mode 3 is accepted exactly when `sub` is a non-empty string;
//! `JwtBearer` agrees with the verifier; every refusal has a kind and a
//! valid `WWW-Authenticate` value.

use std::path::Path;
use std::sync::LazyLock;

use ed25519_dalek::{Signer, SigningKey, Verifier};
use moltgate::path::authenticate::JwtBearer;
use moltgate::platform::BearerVerifier;
use moltgate::policy::jwt::{JwtValidationConfig, JwtVerifier, Subject};
use serde_json::{Map, Value};

use super::common::*;

/// 48 random-looking bytes: strong, and not a published default.
const SECRET: &str = "fz-7Qm2vX9kL4pW8tR3nB6yH1cJ5dG0sA-moltgate-fuzz";
const ISSUER: &str = "auth.example.com";
const AUDIENCE: &str = "moltbot.api";

struct Case {
    verifier: JwtVerifier,
    /// `HS256` or `EdDSA`.
    alg: &'static str,
    /// Key id to put in harness headers.
    kid: Option<&'static str>,
    /// Whether `iss`/`aud` are checked.
    scoped: bool,
    leeway: u64,
}

fn compile(text: &str) -> JwtVerifier {
    let path = Path::new("security_policy.yaml");
    let cfg: JwtValidationConfig = moltgate::config::yaml::parse_str(path, text).expect("config");
    JwtVerifier::new(&cfg, key_dir(), path, text).expect("verifier")
}

static CASES: LazyLock<[Case; 4]> = LazyLock::new(|| {
    [
        Case {
            verifier: compile(&format!(
                "issuer: {ISSUER}\naudiences: [{AUDIENCE}]\nleeway: 60\nalgorithms: [HS256]\nsecret: {SECRET}\n"
            )),
            alg: "HS256",
            kid: None,
            scoped: true,
            leeway: 60,
        },
        Case {
            verifier: compile(&format!("leeway: 0\nalgorithms: [HS256]\nsecret: {SECRET}\n")),
            alg: "HS256",
            kid: None,
            scoped: false,
            leeway: 0,
        },
        Case {
            verifier: compile("leeway: 5\nalgorithms: [EdDSA]\npublic_key: ed25519.pem\n"),
            alg: "EdDSA",
            kid: None,
            scoped: false,
            leeway: 5,
        },
        Case {
            verifier: compile("leeway: 5\nalgorithms: [EdDSA]\njwks: jwks.json\n"),
            alg: "EdDSA",
            kid: Some("k1"),
            scoped: false,
            leeway: 5,
        },
    ]
});

static ED_KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&ED25519_SECRET));
static OTHER_ED_KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[7; 32]));

/// `header.payload.signature`, signed for `alg` with the HS secret `hs` or
/// the Ed25519 key `ed`.
fn sign(header: &[u8], payload: &[u8], alg: &str, hs: &[u8], ed: &SigningKey) -> String {
    let input = format!("{}.{}", b64url(header), b64url(payload));
    let sig = if alg == "EdDSA" {
        ed.sign(input.as_bytes()).to_bytes().to_vec()
    } else {
        hmac_sha256(hs, input.as_bytes()).to_vec()
    };
    format!("{input}.{}", b64url(&sig))
}

fn header_for(case: &Case, alg: &str) -> Vec<u8> {
    let mut h = serde_json::json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = case.kid {
        h["kid"] = kid.into();
    }
    h.to_string().into_bytes()
}

/// Mode 3's claims: `rest` as an object, with a valid `exp` (and `iss`,
/// `aud` for the scoped verifier) and no `nbf`.
fn valid_claims(rest: &[u8], case: &Case) -> Map<String, Value> {
    let mut claims = match serde_json::from_slice::<Value>(rest) {
        Ok(Value::Object(m)) => m,
        _ => {
            let mut m = Map::new();
            m.insert("sub".into(), String::from_utf8_lossy(rest).into());
            m
        }
    };
    claims.insert("exp".into(), (unix_now() + 600).into());
    claims.remove("nbf");
    if case.scoped {
        claims.insert("iss".into(), ISSUER.into());
        claims.insert("aud".into(), AUDIENCE.into());
    } else {
        claims.remove("iss");
        claims.remove("aud");
    }
    claims
}

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let case = &CASES[usize::from(ctl & 3)];
    let mode = (ctl >> 2) & 7;
    let right =
        |header: &[u8], payload: &[u8]| sign(header, payload, case.alg, SECRET.as_bytes(), &ED_KEY);
    let mut expect_ok = None;
    let token = match mode {
        0 => None,
        1 => Some(String::from_utf8_lossy(rest).into_owned()),
        2 => Some(right(&header_for(case, case.alg), rest)),
        3 => {
            let claims = valid_claims(rest, case);
            expect_ok = Some(matches!(claims.get("sub"), Some(Value::String(s)) if !s.is_empty()));
            let payload = Value::Object(claims).to_string();
            Some(right(&header_for(case, case.alg), payload.as_bytes()))
        }
        4 => {
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            let payload = Value::Object(valid_claims(claims, case)).to_string();
            Some(right(header, payload.as_bytes()))
        }
        5 => {
            let payload = Value::Object(valid_claims(rest, case)).to_string();
            let other = b"fz-another-secret-of-forty-eight-bytes-0123456789";
            Some(sign(
                &header_for(case, case.alg),
                payload.as_bytes(),
                case.alg,
                other,
                &OTHER_ED_KEY,
            ))
        }
        6 => {
            let (sig, claims) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&b""[..], rest),
            };
            let payload = Value::Object(valid_claims(claims, case)).to_string();
            Some(format!(
                "{}.{}.{}",
                b64url(&header_for(case, "none")),
                b64url(payload.as_bytes()),
                String::from_utf8_lossy(sig)
            ))
        }
        _ => {
            let payload = Value::Object(valid_claims(rest, case)).to_string();
            Some(if case.alg == "EdDSA" {
                let key = if case.kid.is_some() {
                    ed25519_jwks()
                } else {
                    ed25519_public_pem()
                };
                sign(
                    &header_for(case, "HS256"),
                    payload.as_bytes(),
                    "HS256",
                    key.as_bytes(),
                    &ED_KEY,
                )
            } else {
                sign(
                    &header_for(case, "EdDSA"),
                    payload.as_bytes(),
                    "EdDSA",
                    &[],
                    &ED_KEY,
                )
            })
        }
    };
    let authorization = match token {
        None => String::from_utf8_lossy(rest).into_owned(),
        Some(t) if ctl & 0x20 != 0 => format!("  bearer   {t} "),
        Some(t) => format!("Bearer {t}"),
    };
    let result = case.verifier.verify(Some(&authorization));
    let bearer = JwtBearer(&case.verifier).verify(Some(&authorization));
    assert_eq!(
        result.as_ref().map(|s| s.id.clone()).ok(),
        bearer.as_ref().map(|p| p.id.clone()).ok(),
        "JwtBearer disagrees with the verifier"
    );
    if let Some(ok) = expect_ok {
        assert_eq!(result.is_ok(), ok, "a well-formed token: {result:?}");
    }
    match result {
        Ok(subject) => {
            assert!(mode <= 4, "mode {mode} token accepted: {authorization:?}");
            accepted(case, &authorization, &subject);
        }
        Err(e) => {
            assert!(!e.kind().is_empty());
            assert!(http::HeaderValue::from_str(&e.www_authenticate()).is_ok());
            if let Err(moltgate::platform::Rejection::Unauthorized {
                challenge, kind, ..
            }) = bearer
            {
                assert_eq!(kind, e.kind());
                assert_eq!(challenge, e.www_authenticate());
            } else {
                panic!("JwtBearer refused with something other than Unauthorized");
            }
        }
    }
}

/// What must hold of a token the verifier accepted, checked on the token
/// itself with the harness's own decoding and signature check.
fn accepted(case: &Case, authorization: &str, subject: &Subject) {
    assert!(!subject.id.is_empty(), "accepted with an empty subject id");
    let token = authorization
        .trim()
        .split_once(' ')
        .map(|(_, t)| t.trim())
        .expect("an accepted Authorization has a scheme");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
    let header: Value = b64url_decode(parts[0])
        .and_then(|h| serde_json::from_slice(&h).ok())
        .expect("an accepted token has a base64url JSON header");
    assert_eq!(
        header["alg"], case.alg,
        "accepted a token for another algorithm"
    );
    let input = &token[..parts[0].len() + 1 + parts[1].len()];
    let sig = b64url_decode(parts[2]).expect("an accepted signature is base64url");
    let verified = if case.alg == "EdDSA" {
        ed25519_dalek::Signature::from_slice(&sig)
            .is_ok_and(|s| ED_KEY.verifying_key().verify(input.as_bytes(), &s).is_ok())
    } else {
        sig == hmac_sha256(SECRET.as_bytes(), input.as_bytes())
    };
    assert!(verified, "accepted a token its key did not sign");
    let claims: Map<String, Value> = b64url_decode(parts[1])
        .and_then(|c| serde_json::from_slice(&c).ok())
        .expect("accepted claims are a base64url JSON object");
    let now = unix_now();
    // A NumericDate may be fractional (RFC 7519 §2).
    let numeric = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    };
    let exp = claims
        .get("exp")
        .and_then(numeric)
        .expect("accepted without a numeric exp");
    assert!(
        exp + case.leeway + 5 >= now,
        "accepted after exp {exp} (now {now})"
    );
    if let Some(nbf) = claims.get("nbf").and_then(numeric) {
        assert!(
            nbf <= now + case.leeway + 5,
            "accepted before nbf {nbf} (now {now})"
        );
    }
    if case.scoped {
        // A configured issuer and audience are required claims; jsonwebtoken
        // takes a list of strings for either when one of them matches.
        let matches = |claim: Option<&Value>, want: &str| match claim {
            Some(Value::String(v)) => v == want,
            Some(Value::Array(a)) => a.iter().all(Value::is_string) && a.iter().any(|v| v == want),
            _ => false,
        };
        assert!(
            matches(claims.get("iss"), ISSUER),
            "accepted with iss {:?}",
            claims.get("iss")
        );
        assert!(
            matches(claims.get("aud"), AUDIENCE),
            "accepted with aud {:?}",
            claims.get("aud")
        );
    }
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    assert_eq!(subject.id, text(claims.get("sub")));
    assert_eq!(subject.tenant, text(claims.get("tenant")));
    assert_eq!(subject.device_type, text(claims.get("device_type")));
    for (k, v) in &subject.claims {
        assert!(claims.contains_key(k), "claim {k}={v} not in the token");
    }
}
