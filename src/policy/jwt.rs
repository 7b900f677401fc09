//! JWT authentication for the generic HTTP API (`jwt_validation` in
//! `security_policy.yaml`).
//!
//! The key comes from `secret` for HS*, or from `public_key` (a PEM file) or
//! `jwks` (a JWKS file) for RS*, ES* and EdDSA; files are resolved against the
//! policies directory and read at load time, so verification never touches
//! the disk. Claims `sub`, `roles`, `tenant` and `device_type` become subject
//! attributes; every other scalar claim is kept for ABAC's `claims.<name>`.
//!
//! An HS secret that anyone could know protects nothing: an empty one, a
//! published default (the demo's, the tests', jwt.io's), or one shorter than
//! the hash (32 bytes for HS256, 48 for HS384, 64 for HS512; RFC 7518 §3.2).
//! Compiling such a policy succeeds (so `explain` and `dlp scan` still read
//! the shipped files), but the verifier remembers why it is weak
//! ([`JwtVerifier::weak_secret`]) and the gateway refuses to start with it
//! outside the shipped demo config ([`JwtVerifier::require_strong_secret`]),
//! as does `moltgate check`; a reload never turns a strong secret weak
//! ([`JwtVerifier::no_weaker_than`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::jwk::JwkSet;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

use crate::config::yaml::{locate, locate_key, EnvString};
use crate::config::FileError;

/// Secrets published in moltgate's repository (the shipped demo policy, its
/// tests and docs) or in every JWT tutorial: known to anyone, whatever their length.
pub const KNOWN_SECRETS: &[&str] = &[
    "demo-only-secret-change-me",
    "test-secret",
    "mp-jwt-test-secret",
    "bench-secret-0123456789abcdef",
    "your-256-bit-secret",
    "your-384-bit-secret",
    "your-512-bit-secret",
    "secret",
    "secretkey",
    "secret-key",
    "jwt-secret",
    "changeme",
    "password",
];

/// Words that mark a placeholder someone meant to replace.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
];

/// `jwt_validation` as written in `security_policy.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtValidationConfig {
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<EnvString>,
    /// Accepted `aud` values (any one must match).
    #[serde(default)]
    pub audiences: Vec<EnvString>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway: u64,
    /// Accepted algorithms; default HS256 with `secret`, else RS256.
    #[serde(default)]
    pub algorithms: Vec<EnvString>,
    /// Shared secret for HS256/384/512.
    #[serde(default)]
    pub secret: Option<EnvString>,
    /// PEM public key file for RS*/PS*/ES*/EdDSA.
    #[serde(default)]
    pub public_key: Option<EnvString>,
    /// JWKS file (keys chosen by `kid`).
    #[serde(default)]
    pub jwks: Option<EnvString>,
}

/// The largest `leeway`: more is no longer clock skew (and jsonwebtoken
/// computes `now - leeway`, which must not underflow).
pub const MAX_LEEWAY_SECS: u64 = 3600;

fn default_leeway() -> u64 {
    60
}

/// Why a token was refused. The message is safe to send to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Not a parseable JWT.
    #[error("malformed token")]
    Malformed,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` is not one of the configured audiences.
    #[error("wrong audience")]
    Audience,
    /// The signature does not verify.
    #[error("invalid signature")]
    Signature,
    /// The algorithm is not allowed, or no key matches the token's `kid`.
    #[error("algorithm or key not accepted")]
    Key,
    /// A required claim (`sub`, `exp`) is missing or mistyped.
    #[error("missing or invalid claim")]
    Claims,
    /// No key is configured, so nothing can verify (fail closed).
    #[error("authentication is not configured")]
    NotConfigured,
}

impl JwtError {
    /// A bounded label for metrics and audit.
    pub fn kind(&self) -> &'static str {
        match self {
            JwtError::Missing => "jwt_missing",
            JwtError::Malformed => "jwt_malformed",
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::Issuer => "jwt_issuer",
            JwtError::Audience => "jwt_audience",
            JwtError::Signature => "jwt_signature",
            JwtError::Key => "jwt_key",
            JwtError::Claims => "jwt_claims",
            JwtError::NotConfigured => "jwt_not_configured",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750).
    pub fn www_authenticate(&self) -> String {
        match self {
            JwtError::Missing => r#"Bearer realm="moltgate""#.to_string(),
            other => format!(
                r#"Bearer realm="moltgate", error="invalid_token", error_description="{other}""#
            ),
        }
    }
}

/// The authenticated subject, from the token's claims: the bearer token's
/// view of who is asking. The gateway copies it into the one authorisation
/// subject, [`crate::policy::subject::Subject`], which also carries the person,
/// platform and the claims' JSON values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// `sub`.
    pub id: String,
    /// `roles` (array or comma-separated string).
    pub roles: Vec<String>,
    /// `tenant`.
    pub tenant: String,
    /// `device_type`.
    pub device_type: String,
    /// Every scalar claim, stringified, for ABAC `claims.<name>`.
    pub claims: BTreeMap<String, String>,
}

enum Keys {
    None,
    One(DecodingKey),
    Set(Vec<(Option<String>, DecodingKey)>),
}

/// A token that verified: its subject and the time bounds to re-check on
/// every later use.
#[derive(Debug)]
struct Verified {
    subject: Subject,
    exp: i64,
    nbf: Option<i64>,
}

/// Tokens remembered after they verified. A client sends the same token for
/// many requests; decoding, checking the signature and parsing the claims
/// again was the largest policy cost per API request (issue 11). A hit is
/// the exact token text; expiry and not-before are checked again on every
/// use; failures are never remembered; a reload builds a new verifier, so
/// a rotated key or a changed issuer forgets every token at once.
const VERIFIED_TOKENS: u64 = 10_000;
/// How long a verified token is remembered at most (its `exp` still rules).
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

fn verified_cache() -> moka::sync::Cache<String, Arc<Verified>> {
    moka::sync::Cache::builder()
        .max_capacity(VERIFIED_TOKENS)
        .time_to_live(VERIFIED_TTL)
        .build()
}

/// A compiled `jwt_validation`.
pub struct JwtVerifier {
    verified: moka::sync::Cache<String, Arc<Verified>>,
    validation: Validation,
    keys: Keys,
    secret: Option<Vec<u8>>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Why the HS secret protects nothing, located in the policy file.
    weak: Option<FileError>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Compiles `cfg`, read from `file` (whose text is `text`); key files are
    /// resolved against `dir`.
    pub fn new(
        cfg: &JwtValidationConfig,
        dir: &Path,
        file: &Path,
        text: &str,
    ) -> Result<Self, FileError> {
        let at = |needle: &str, msg: String| FileError::at(file, locate(text, needle), msg);
        if cfg.leeway > MAX_LEEWAY_SECS {
            return Err(FileError::at(
                file,
                locate_key(text, "leeway"),
                format!(
                    "jwt_validation.leeway is {} s; at most {MAX_LEEWAY_SECS} s (it allows for clock skew, usually 60)",
                    cfg.leeway
                ),
            ));
        }
        let algorithms = algorithms(cfg, &at)?;
        let hmac = algorithms.iter().any(|a| is_hmac(*a));
        if hmac && algorithms.iter().any(|a| !is_hmac(*a)) {
            return Err(at(
                "algorithms",
                "jwt_validation.algorithms mixes HS* with public-key algorithms; use one family"
                    .into(),
            ));
        }
        let keys = if hmac {
            match &cfg.secret {
                Some(s) if !s.is_empty() => Keys::One(DecodingKey::from_secret(s.as_bytes())),
                _ => Keys::None,
            }
        } else {
            public_keys(cfg, dir, algorithms.first().copied(), &at)?
        };
        let weak = hmac
            .then(|| secret_weakness(cfg.secret.as_deref(), &algorithms))
            .flatten()
            .map(|msg| {
                let pos = locate_key(text, "secret")
                    .or_else(|| locate(text, "algorithms"))
                    .or_else(|| locate(text, "jwt_validation"));
                FileError::at(file, pos, msg)
            });
        Ok(Self {
            verified: verified_cache(),
            validation: validation(cfg, algorithms),
            keys,
            secret: cfg
                .secret
                .as_ref()
                .filter(|_| hmac)
                .map(|s| s.as_bytes().to_vec()),
            issuer: cfg.issuer.as_ref().map(|s| s.0.clone()),
            audience: cfg.audiences.first().map(|s| s.0.clone()),
            weak,
        })
    }

    /// Why the HS secret protects nothing (empty, published, or shorter than
    /// the algorithm needs), located in the policy file; `None` for a strong
    /// secret and for public-key algorithms.
    pub fn weak_secret(&self) -> Option<&FileError> {
        self.weak.as_ref()
    }

    /// Refuses a weak HS secret, unless `demo` (the shipped demo config, see
    /// `Config::is_demo`), where it is only logged as a warning.
    pub fn require_strong_secret(&self, demo: bool) -> Result<(), FileError> {
        match &self.weak {
            None => Ok(()),
            Some(weak) if demo => {
                tracing::warn!(
                    problem = %weak,
                    "the demo config accepts this JWT secret; any other config refuses it: set MOLTGATE_JWT_SECRET before serving anyone but yourself"
                );
                Ok(())
            }
            Some(weak) => Err(weak.clone()),
        }
    }

    /// For a reload: refuses a weak secret when the set in force has none, so
    /// an edit cannot weaken a gateway that started strong (the demo, which
    /// started weak, may stay weak).
    pub fn no_weaker_than(&self, previous: &JwtVerifier) -> Result<(), FileError> {
        match (&self.weak, &previous.weak) {
            (Some(weak), None) => Err(weak.clone()),
            _ => Ok(()),
        }
    }

    /// A verifier with no key: refuses every token.
    pub fn unconfigured() -> Self {
        Self {
            verified: verified_cache(),
            validation: Validation::new(Algorithm::HS256),
            keys: Keys::None,
            secret: None,
            issuer: None,
            audience: None,
            weak: None,
        }
    }

    /// Verifies the `Authorization` header value and returns the subject.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Subject, JwtError> {
        let token = authorization
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(JwtError::Missing)?;
        if let Some(known) = self.verified.get(token) {
            return self.still_valid(&known);
        }
        let (subject, exp, nbf) = self.decode(token)?;
        self.verified.insert(
            token.to_string(),
            Arc::new(Verified {
                subject: subject.clone(),
                exp,
                nbf,
            }),
        );
        Ok(subject)
    }

    /// A remembered token's time bounds, checked as jsonwebtoken checks
    /// them (with the leeway).
    fn still_valid(&self, known: &Verified) -> Result<Subject, JwtError> {
        let now = chrono::Utc::now().timestamp();
        let leeway = i64::try_from(self.validation.leeway).unwrap_or(i64::MAX);
        if known.exp.saturating_add(leeway) < now {
            return Err(JwtError::Expired);
        }
        if known
            .nbf
            .is_some_and(|nbf| nbf.saturating_sub(leeway) > now)
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(known.subject.clone())
    }

    /// The full check: signature, algorithm, claims; the subject and the
    /// token's `exp` and `nbf`.
    fn decode(&self, token: &str) -> Result<(Subject, i64, Option<i64>), JwtError> {
        let key = match &self.keys {
            Keys::None => return Err(JwtError::NotConfigured),
            Keys::One(k) => k,
            Keys::Set(keys) => {
                let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
                let found = match &header.kid {
                    Some(kid) => keys
                        .iter()
                        .find(|(k, _)| k.as_deref() == Some(kid.as_str())),
                    None if keys.len() == 1 => keys.first(),
                    None => None,
                };
                &found.ok_or(JwtError::Key)?.1
            }
        };
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &self.validation,
        )
        .map_err(|e| map_error(e.kind()))?;
        // NumericDate may be fractional (RFC 7519 §2); jsonwebtoken accepts both.
        let time = |k: &str| {
            let v = data.claims.get(k)?;
            v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
        };
        // `exp` is required, and jsonwebtoken accepted it as a number.
        let exp = time("exp").ok_or(JwtError::Claims)?;
        let nbf = time("nbf");
        Ok((subject_from_claims(&data.claims)?, exp, nbf))
    }

    /// The HS secret, when one is configured (for `moltgate token`).
    pub fn hs_secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }

    /// Mints an HS256 token for `sub` with extra claims, valid for `ttl_secs`.
    /// Refuses when no HS secret is configured.
    pub fn mint(
        &self,
        sub: &str,
        extra: &BTreeMap<String, serde_json::Value>,
        ttl_secs: u64,
    ) -> Result<String, String> {
        let secret = self
            .hs_secret()
            .ok_or("no HS secret is configured in jwt_validation.secret; tokens for public-key algorithms must come from your identity provider")?;
        let now = chrono::Utc::now().timestamp();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), sub.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl_secs as i64).into());
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), iss.clone().into());
        }
        if let Some(aud) = &self.audience {
            claims.insert("aud".into(), aud.clone().into());
        }
        for (k, v) in extra {
            claims.insert(k.clone(), v.clone());
        }
        let alg = self
            .validation
            .algorithms
            .first()
            .copied()
            .unwrap_or(Algorithm::HS256);
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .map_err(|e| e.to_string())
    }
}

/// Builds a located error from the text to point at and a message.
type At<'a> = dyn Fn(&str, String) -> FileError + 'a;

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Bytes of key an HMAC algorithm needs: its hash's output (RFC 7518 §3.2).
fn hmac_key_len(a: Algorithm) -> usize {
    match a {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// What is wrong with an HS `secret` for `algorithms`, as an operator reads
/// it (never the secret itself), or `None` when it is fit for use.
pub fn secret_weakness(secret: Option<&str>, algorithms: &[Algorithm]) -> Option<String> {
    let (alg, need) = algorithms
        .iter()
        .filter(|a| is_hmac(**a))
        .map(|a| (*a, hmac_key_len(*a)))
        .max_by_key(|(_, n)| *n)
        .unwrap_or((Algorithm::HS256, 32));
    let fix = format!(
        "{alg:?} needs at least {need} random bytes (generate one with: openssl rand -base64 {})",
        need * 3 / 2
    );
    let secret = secret.unwrap_or("");
    let lower = secret.trim().to_ascii_lowercase();
    if secret.is_empty() {
        return Some(format!("jwt_validation.secret is empty; {fix}"));
    }
    if KNOWN_SECRETS.contains(&lower.as_str()) || PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return Some(format!(
            "jwt_validation.secret is a published default that anyone can sign tokens with; set MOLTGATE_JWT_SECRET (or the secret) to your own: {fix}"
        ));
    }
    if secret.len() < need {
        return Some(format!(
            "jwt_validation.secret is {} bytes; {fix}",
            secret.len()
        ));
    }
    None
}

/// The accepted algorithms: as configured, else HS256 with a secret, RS256 without.
fn algorithms(cfg: &JwtValidationConfig, at: &At<'_>) -> Result<Vec<Algorithm>, FileError> {
    if cfg.algorithms.is_empty() {
        return Ok(vec![if cfg.secret.is_some() {
            Algorithm::HS256
        } else {
            Algorithm::RS256
        }]);
    }
    cfg.algorithms
        .iter()
        .map(|a| {
            Algorithm::from_str(a).map_err(|_| {
                at(
                    a,
                    format!("unknown JWT algorithm '{a}'; expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"),
                )
            })
        })
        .collect()
}

/// The public key (`public_key` PEM) or key set (`jwks`), read now so that
/// verification never touches the disk.
fn public_keys(
    cfg: &JwtValidationConfig,
    dir: &Path,
    first: Option<Algorithm>,
    at: &At<'_>,
) -> Result<Keys, FileError> {
    let read = |p: &str| {
        let path = dir.join(p);
        std::fs::read(&path).map_err(|e| at(p, format!("cannot read {}: {e}", path.display())))
    };
    if let Some(p) = &cfg.public_key {
        let pem = read(p)?;
        let alg = first.unwrap_or(Algorithm::RS256);
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
            _ => DecodingKey::from_rsa_pem(&pem),
        }
        .map_err(|e| {
            at(
                p,
                format!("public_key {p} is not a valid {alg:?} PEM public key: {e}"),
            )
        })?;
        return Ok(Keys::One(key));
    }
    let Some(p) = &cfg.jwks else {
        return Ok(Keys::None);
    };
    let raw = read(p)?;
    let set: JwkSet = serde_json::from_slice(&raw)
        .map_err(|e| at(p, format!("jwks {p} is not a JWKS document: {e}")))?;
    let keys = set
        .keys
        .iter()
        .map(|k| {
            DecodingKey::from_jwk(k)
                .map(|d| (k.common.key_id.clone(), d))
                .map_err(|e| at(p, format!("jwks {p}: unusable key: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Keys::Set(keys))
}

/// The token checks: algorithms, leeway, `nbf`, required `exp` and `sub`,
/// issuer and audiences when configured.
fn validation(cfg: &JwtValidationConfig, algorithms: Vec<Algorithm>) -> Validation {
    let mut validation = Validation::new(algorithms.first().copied().unwrap_or(Algorithm::HS256));
    validation.algorithms = algorithms;
    validation.leeway = cfg.leeway;
    validation.validate_nbf = true;
    // jsonwebtoken checks `iss` and `aud` only when the token has them (as
    // strings): a configured issuer or audience must also be required, or a
    // token that leaves the claim out, or makes it a number, passes.
    let mut required = vec!["exp", "sub"];
    if cfg.issuer.is_some() {
        required.push("iss");
    }
    if !cfg.audiences.is_empty() {
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    if let Some(iss) = &cfg.issuer {
        validation.set_issuer(&[iss.0.as_str()]);
    }
    if cfg.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(
            &cfg.audiences
                .iter()
                .map(|a| a.0.as_str())
                .collect::<Vec<_>>(),
        );
    }
    validation
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidIssuer => JwtError::Issuer,
        K::InvalidAudience => JwtError::Audience,
        K::InvalidSignature => JwtError::Signature,
        K::InvalidAlgorithm
        | K::InvalidAlgorithmName
        | K::InvalidKeyFormat
        | K::InvalidRsaKey(_)
        | K::InvalidEcdsaKey => JwtError::Key,
        K::MissingRequiredClaim(claim) if claim == "iss" => JwtError::Issuer,
        K::MissingRequiredClaim(claim) if claim == "aud" => JwtError::Audience,
        K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) | K::InvalidSubject => {
            JwtError::Claims
        }
        _ => JwtError::Malformed,
    }
}

fn subject_from_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Subject, JwtError> {
    use serde_json::Value;
    let text = |k: &str| match claims.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let id = text("sub");
    if id.is_empty() {
        return Err(JwtError::Claims);
    }
    let roles = match claims.get("roles") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect(),
        _ => Vec::new(),
    };
    let scalars = claims
        .iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k.clone(), s.clone())),
            Value::Number(n) => Some((k.clone(), n.to_string())),
            Value::Bool(b) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .collect();
    Ok(Subject {
        id,
        roles,
        tenant: text("tenant"),
        device_type: text("device_type"),
        claims: scalars,
    })
}

#[cfg(test)]
mod tests;
