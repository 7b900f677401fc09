//! Unit tests of `jwt`.

use super::*;

fn verifier(extra: &str) -> JwtVerifier {
    let text = format!(
        "issuer: auth.example.com\naudiences: [moltbot.api]\nleeway: 5\nsecret: s3cret\n{extra}"
    );
    let cfg: JwtValidationConfig =
        crate::config::yaml::parse_str(Path::new("p.yaml"), &text).unwrap();
    JwtVerifier::new(&cfg, Path::new("."), Path::new("p.yaml"), &text).unwrap()
}

fn token(secret: &[u8], claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn compiled(text: &str) -> JwtVerifier {
    let cfg: JwtValidationConfig =
        crate::config::yaml::parse_str(Path::new("policies/security_policy.yaml"), text).unwrap();
    JwtVerifier::new(
        &cfg,
        Path::new("."),
        Path::new("policies/security_policy.yaml"),
        text,
    )
    .unwrap()
}

/// A leeway past an hour is refused where it is written: jsonwebtoken
/// computes `now - leeway`, which overflowed (found by policy_load).
/// A remembered token is the exact text that verified: the same claims
/// under another signature are checked (and refused) in full, and a
/// remembered token's expiry and not-before still apply.
#[test]
fn remembered_tokens_are_exact_and_still_expire() {
    let v = verifier("");
    let claims = serde_json::json!({"sub":"alice","iss":"auth.example.com","aud":"moltbot.api","exp":now()+600});
    let good = token(b"s3cret", claims.clone());
    let bearer = |t: &str| format!("Bearer {t}");
    assert_eq!(v.verify(Some(&bearer(&good))).unwrap().id, "alice");
    assert_eq!(v.verify(Some(&bearer(&good))).unwrap().id, "alice");
    let forged = token(b"guess", claims);
    assert_eq!(v.verify(Some(&bearer(&forged))), Err(JwtError::Signature));
    // Tampered signature bytes of the remembered token: not a hit.
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    assert!(v.verify(Some(&bearer(&tampered))).is_err());
    let subject = Subject {
        id: "alice".into(),
        ..Default::default()
    };
    let known = |exp, nbf| Verified {
        subject: subject.clone(),
        exp,
        nbf,
    };
    // Leeway 5 s either way, as jsonwebtoken applies it.
    assert!(v.still_valid(&known(now() - 2, None)).is_ok());
    assert_eq!(
        v.still_valid(&known(now() - 60, None)),
        Err(JwtError::Expired)
    );
    assert_eq!(
        v.still_valid(&known(now() + 600, Some(now() + 60))),
        Err(JwtError::NotYetValid)
    );
}

#[test]
fn leeway_past_an_hour_is_refused_with_its_location() {
    let text = "issuer: a\nleeway: 99999999999\nsecret: s3cret-s3cret-s3cret-s3cret-s3cret\n";
    let cfg: JwtValidationConfig =
        crate::config::yaml::parse_str(Path::new("p.yaml"), text).unwrap();
    let Err(err) = JwtVerifier::new(&cfg, Path::new("."), Path::new("p.yaml"), text) else {
        panic!("must be refused");
    };
    assert!(
        err.to_string()
            .starts_with("p.yaml:2:1: jwt_validation.leeway"),
        "{err}"
    );
    let ok = text.replace("99999999999", "3600");
    let cfg: JwtValidationConfig =
        crate::config::yaml::parse_str(Path::new("p.yaml"), &ok).unwrap();
    assert!(JwtVerifier::new(&cfg, Path::new("."), Path::new("p.yaml"), &ok).is_ok());
}

/// Empty, published and short HS secrets are remembered as weak, with a
/// located, actionable message that never repeats the secret.
#[test]
fn weak_secrets_are_located_and_explained() {
    let weak = |text: &str| {
        compiled(text)
            .weak_secret()
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    assert_eq!(
            weak("issuer: x\nalgorithms: [HS256]\nsecret: s3cret-word\n"),
            "policies/security_policy.yaml:3:1: jwt_validation.secret is 11 bytes; HS256 needs at least 32 random bytes (generate one with: openssl rand -base64 48)"
        );
    assert!(weak("secret: \"\"\n").contains(":1:1: jwt_validation.secret is empty; HS256 needs"));
    // HS algorithms and no secret at all is empty too.
    assert!(weak("issuer: x\nalgorithms: [HS256]\n").contains("is empty"));
    for published in [
        "demo-only-secret-change-me",
        "test-secret",
        "your-256-bit-secret",
        "Secret",
        "please-change-me-0123456789abcdef0123456789",
    ] {
        let msg = weak(&format!("secret: \"{published}\"\n"));
        assert!(msg.contains("published default"), "{published}: {msg}");
        assert!(msg.contains("MOLTGATE_JWT_SECRET"), "{msg}");
        assert!(!msg.contains(published), "never echoes the secret: {msg}");
    }
    // Longer hashes need longer keys.
    let msg = weak(&format!(
        "algorithms: [HS512]\nsecret: {}\n",
        "k".repeat(40)
    ));
    assert!(msg.contains("is 40 bytes; HS512 needs at least 64 random bytes (generate one with: openssl rand -base64 96)"), "{msg}");
    // Strong secrets, public keys and no JWT at all are not weak.
    assert!(compiled(&format!("secret: {}\n", "q7".repeat(16)))
        .weak_secret()
        .is_none());
    assert!(compiled("issuer: x\n").weak_secret().is_none());
    assert!(JwtVerifier::unconfigured().weak_secret().is_none());
}

#[test]
fn strong_secret_is_required_outside_the_demo_and_kept_on_reload() {
    let weak = compiled("secret: short\n");
    let strong = compiled(&format!("secret: {}\n", "q7".repeat(16)));
    assert!(weak.require_strong_secret(false).is_err());
    assert!(weak.require_strong_secret(true).is_ok());
    assert!(strong.require_strong_secret(false).is_ok());
    // A reload may not weaken a strong set; a weak (demo) set may stay weak.
    assert!(weak.no_weaker_than(&strong).is_err());
    assert!(weak.no_weaker_than(&weak).is_ok());
    assert!(strong.no_weaker_than(&weak).is_ok());
    assert!(weak.no_weaker_than(&JwtVerifier::unconfigured()).is_err());
}

#[test]
fn valid_token_yields_subject() {
    let v = verifier("");
    let t = token(
        b"s3cret",
        serde_json::json!({"sub":"alice","iss":"auth.example.com","aud":"moltbot.api","exp":now()+60,"roles":["admin","user"],"tenant":"acme","device_type":"mobile","dept":"sre"}),
    );
    let s = v.verify(Some(&format!("Bearer {t}"))).unwrap();
    assert_eq!(s.id, "alice");
    assert_eq!(s.roles, vec!["admin", "user"]);
    assert_eq!(
        (s.tenant.as_str(), s.device_type.as_str()),
        ("acme", "mobile")
    );
    assert_eq!(s.claims.get("dept").map(String::as_str), Some("sre"));
}

#[test]
fn refusals() {
    let v = verifier("");
    let good =
        serde_json::json!({"sub":"a","iss":"auth.example.com","aud":"moltbot.api","exp":now()+60});
    let with = |k: &str, val: serde_json::Value| {
        let mut c = good.clone();
        c[k] = val;
        format!("Bearer {}", token(b"s3cret", c))
    };
    assert_eq!(v.verify(None), Err(JwtError::Missing));
    assert_eq!(v.verify(Some("Basic abc")), Err(JwtError::Missing));
    assert_eq!(v.verify(Some("Bearer not.a.jwt")), Err(JwtError::Malformed));
    assert_eq!(
        v.verify(Some(&with("exp", (now() - 3600).into()))),
        Err(JwtError::Expired)
    );
    assert_eq!(
        v.verify(Some(&with("iss", "evil".into()))),
        Err(JwtError::Issuer)
    );
    assert_eq!(
        v.verify(Some(&with("aud", "other".into()))),
        Err(JwtError::Audience)
    );
    assert_eq!(
        v.verify(Some(&with("nbf", (now() + 3600).into()))),
        Err(JwtError::NotYetValid)
    );
    let forged = format!("Bearer {}", token(b"wrong", good.clone()));
    assert_eq!(v.verify(Some(&forged)), Err(JwtError::Signature));
    assert_eq!(
        JwtVerifier::unconfigured().verify(Some(&forged)),
        Err(JwtError::NotConfigured)
    );
    assert!(JwtError::Expired
        .www_authenticate()
        .contains(r#"error="invalid_token""#));
}

#[test]
fn alg_none_and_swapped_algorithms_are_refused() {
    let v = verifier("");
    // {"alg":"none"} with no signature.
    let header = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        br#"{"alg":"none","typ":"JWT"}"#,
    );
    let body = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::json!({"sub":"a","exp":now()+60}).to_string(),
    );
    assert!(v.verify(Some(&format!("Bearer {header}.{body}."))).is_err());
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &serde_json::json!({"sub":"a","iss":"auth.example.com","aud":"moltbot.api","exp":now()+60}),
        &EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    assert_eq!(
        v.verify(Some(&format!("Bearer {hs512}"))),
        Err(JwtError::Key)
    );
}

#[test]
fn mint_round_trips_and_refuses_without_secret() {
    let v = verifier("");
    let mut extra = BTreeMap::new();
    extra.insert("roles".to_string(), serde_json::json!(["user"]));
    let t = v.mint("bob", &extra, 60).unwrap();
    let s = v.verify(Some(&format!("Bearer {t}"))).unwrap();
    assert_eq!(
        (s.id.as_str(), s.roles.clone()),
        ("bob", vec!["user".to_string()])
    );
    assert!(JwtVerifier::unconfigured().mint("bob", &extra, 60).is_err());
}

#[test]
fn config_errors_are_located() {
    let text = "secret: x\nalgorithms: [HS257]\n";
    let cfg: JwtValidationConfig =
        crate::config::yaml::parse_str(Path::new("p.yaml"), text).unwrap();
    let e = JwtVerifier::new(&cfg, Path::new("."), Path::new("p.yaml"), text).unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let text = "public_key: missing.pem\nalgorithms: [RS256]\n";
    let cfg: JwtValidationConfig =
        crate::config::yaml::parse_str(Path::new("p.yaml"), text).unwrap();
    let e =
        JwtVerifier::new(&cfg, Path::new("/nonexistent"), Path::new("p.yaml"), text).unwrap_err();
    assert!(e.message.contains("cannot read"), "{e}");
}
