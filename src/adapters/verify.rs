//! The fixed menu of verification schemes an adapter file can choose:
//! HMAC (SHA-256 or SHA-1) over a message template, a static token header,
//! Ed25519 over a message template, a JWT bearer (the policies' verifier),
//! or none. Each is built from `verify:` at load (every key checked against
//! the scheme); `crate::platform::declarative` runs it on every request.
//! Secrets never appear in `Debug` or in any error: a rejection says which
//! check failed, not what was expected.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use super::file::{Encoding, HmacAlgorithm, SchemeName, TimeUnit, VerifyFile};

/// A secret: compared and used, never shown.
#[derive(Clone)]
pub struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a value is read from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A header (name lower-cased).
    Header(String),
    /// A query parameter.
    Query(String),
}

/// One piece of a signed-message template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsgPiece {
    /// Literal text.
    Lit(String),
    /// The raw body.
    Body,
    /// The timestamp's raw value.
    Timestamp,
    /// A header's value.
    Header(String),
    /// A query parameter's value.
    Query(String),
}

/// The signed timestamp and its replay window.
#[derive(Debug, Clone)]
pub struct Timestamp {
    /// Where it is.
    pub at: Location,
    /// How far from now it may be.
    pub window: Duration,
    /// Seconds or milliseconds.
    pub unit: TimeUnit,
}

/// A signature: where it is, how it is written, what it covers.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Where the signature is.
    pub at: Location,
    /// Hex or base64.
    pub encoding: Encoding,
    /// Text before the encoded signature (`v0=`, `sha256=`).
    pub prefix: String,
    /// What is signed.
    pub message: Vec<MsgPiece>,
    /// The replay window, when the scheme has one.
    pub timestamp: Option<Timestamp>,
}

/// A compiled scheme.
#[derive(Debug, Clone)]
pub enum Scheme {
    /// HMAC over [`Signed::message`].
    Hmac {
        /// SHA-256 or SHA-1.
        algorithm: HmacAlgorithm,
        /// The key.
        secret: Secret,
        /// Signature and message.
        signed: Signed,
    },
    /// A header (or query parameter) equal to the secret.
    Token {
        /// Where the token is.
        at: Location,
        /// Text before the token (`Bearer `).
        prefix: String,
        /// The expected token.
        secret: Secret,
    },
    /// Ed25519 over [`Signed::message`].
    Ed25519 {
        /// The platform's public key.
        key: VerifyingKey,
        /// Signature and message.
        signed: Signed,
    },
    /// A bearer JWT, checked by the policies' verifier.
    Jwt {
        /// The header that carries it (`authorization`).
        header: String,
    },
    /// Nothing: only behind an IP allow list (or an MQTT listener).
    None,
}

impl Scheme {
    /// The menu's name of the scheme.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Hmac { .. } => "hmac",
            Scheme::Token { .. } => "token",
            Scheme::Ed25519 { .. } => "ed25519",
            Scheme::Jwt { .. } => "jwt",
            Scheme::None => "none",
        }
    }
}

/// A `verify:` problem: the key it is about and what is wrong.
pub type BuildError = (&'static str, String);

fn location(
    header: &Option<String>,
    query: &Option<String>,
    what: &str,
) -> Result<Location, BuildError> {
    match (header, query) {
        (Some(h), None) if valid_header_name(h) => Ok(Location::Header(h.to_ascii_lowercase())),
        (Some(_), None) => Err((
            "header",
            format!("'{what}' header is not a valid header name"),
        )),
        (None, Some(q)) if !q.is_empty() => Ok(Location::Query(q.clone())),
        (None, None) | (None, Some(_)) => {
            Err(("scheme", format!("set the {what}'s `header` (or `query`)")))
        }
        (Some(_), Some(_)) => Err((
            "query",
            format!("set the {what}'s `header` or `query`, not both"),
        )),
    }
}

/// Whether `h` is an HTTP header name.
pub fn valid_header_name(h: &str) -> bool {
    http::HeaderName::from_bytes(h.as_bytes()).is_ok()
}

/// Parses a signed-message template: literal text, `{body}`,
/// `{timestamp}`, `{header.NAME}`, `{query.NAME}`.
pub fn parse_message(raw: &str, has_timestamp: bool) -> Result<Vec<MsgPiece>, String> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(start) = rest.find('{') {
        if start > 0 {
            out.push(MsgPiece::Lit(rest[..start].to_string()));
        }
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated '{{' in message {raw:?}"))?;
        let name = &after[..end];
        out.push(match name {
            "body" => MsgPiece::Body,
            "timestamp" if has_timestamp => MsgPiece::Timestamp,
            "timestamp" => return Err("{timestamp} needs `timestamp:` (its header and window)".into()),
            _ => match name.split_once('.') {
                Some(("header", h)) if valid_header_name(h) => MsgPiece::Header(h.to_ascii_lowercase()),
                Some(("query", q)) if !q.is_empty() => MsgPiece::Query(q.to_string()),
                _ => {
                    let known = ["body", "timestamp", "header.NAME", "query.NAME"];
                    let hint = crate::config::yaml::did_you_mean(name, known)
                        .map(|b| format!(" (did you mean '{{{b}}}'?)"))
                        .unwrap_or_default();
                    return Err(format!(
                        "unknown message part '{{{name}}}'{hint}; expected {{body}}, {{timestamp}}, {{header.NAME}} or {{query.NAME}}"
                    ));
                }
            },
        });
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(MsgPiece::Lit(rest.to_string()));
    }
    if !out.contains(&MsgPiece::Body) {
        return Err(format!(
            "message {raw:?} does not sign {{body}}: the body would not be authenticated"
        ));
    }
    Ok(out)
}

/// Keys each scheme takes (besides `scheme`).
fn allowed_keys(scheme: SchemeName) -> &'static [&'static str] {
    match scheme {
        SchemeName::Hmac => &[
            "algorithm",
            "secret",
            "header",
            "query",
            "encoding",
            "prefix",
            "message",
            "timestamp",
        ],
        SchemeName::Token => &["secret", "header", "query", "prefix"],
        SchemeName::Ed25519 => &[
            "public_key",
            "header",
            "query",
            "encoding",
            "prefix",
            "message",
            "timestamp",
        ],
        SchemeName::Jwt => &["header"],
        SchemeName::None => &[],
    }
}

/// Keys set in `v`, by name.
fn set_keys(v: &VerifyFile) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut add = |set: bool, k: &'static str| {
        if set {
            keys.push(k);
        }
    };
    add(v.algorithm.is_some(), "algorithm");
    add(v.secret.is_some(), "secret");
    add(v.public_key.is_some(), "public_key");
    add(v.header.is_some(), "header");
    add(v.query.is_some(), "query");
    add(v.encoding.is_some(), "encoding");
    add(v.prefix.is_some(), "prefix");
    add(v.message.is_some(), "message");
    add(v.timestamp.is_some(), "timestamp");
    keys
}

fn secret(v: &VerifyFile) -> Result<Secret, BuildError> {
    match &v.secret {
        Some(s) if !s.0.is_empty() => Ok(Secret(s.0.clone())),
        _ => Err((
            "scheme",
            "this scheme needs `secret` (write ${ENV_VAR} to read it from the environment)".into(),
        )),
    }
}

fn signed(v: &VerifyFile) -> Result<Signed, BuildError> {
    let timestamp = match &v.timestamp {
        Some(t) => Some(Timestamp {
            at: location(&t.header, &t.query, "timestamp").map_err(|(_, m)| ("timestamp", m))?,
            window: t.window.0,
            unit: t.unit,
        }),
        None => None,
    };
    let raw = v.message.as_deref().unwrap_or("{body}");
    let message = parse_message(raw, timestamp.is_some()).map_err(|m| ("message", m))?;
    Ok(Signed {
        at: location(&v.header, &v.query, "signature")?,
        encoding: v.encoding.unwrap_or_default(),
        prefix: v.prefix.clone().unwrap_or_default(),
        message,
        timestamp,
    })
}

/// Builds the scheme of `verify:`; an error names the key it is about.
pub(super) fn build(v: &VerifyFile) -> Result<Scheme, BuildError> {
    let allowed = allowed_keys(v.scheme);
    if let Some(k) = set_keys(v).into_iter().find(|k| !allowed.contains(k)) {
        return Err((
            k,
            format!(
                "`{k}` does not apply to this scheme; it takes: {}",
                if allowed.is_empty() {
                    "nothing else".to_string()
                } else {
                    allowed.join(", ")
                }
            ),
        ));
    }
    Ok(match v.scheme {
        SchemeName::Hmac => Scheme::Hmac {
            algorithm: v.algorithm.unwrap_or_default(),
            secret: secret(v)?,
            signed: signed(v)?,
        },
        SchemeName::Token => Scheme::Token {
            at: location(&v.header, &v.query, "token")?,
            prefix: v.prefix.clone().unwrap_or_default(),
            secret: secret(v)?,
        },
        SchemeName::Ed25519 => {
            let raw = v.public_key.as_ref().map(|k| k.0.trim()).unwrap_or("");
            let bytes: [u8; 32] = hex::decode(raw)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or((
                    "scheme",
                    "ed25519 needs `public_key`: 64 hex digits (32 bytes)".to_string(),
                ))?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                (
                    "public_key",
                    "is not a valid Ed25519 public key".to_string(),
                )
            })?;
            Scheme::Ed25519 {
                key,
                signed: signed(v)?,
            }
        }
        SchemeName::Jwt => {
            let header = v.header.clone().unwrap_or_else(|| "authorization".into());
            if !valid_header_name(&header) {
                return Err(("header", "is not a valid header name".into()));
            }
            Scheme::Jwt {
                header: header.to_ascii_lowercase(),
            }
        }
        SchemeName::None => Scheme::None,
    })
}
