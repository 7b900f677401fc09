//! Why an adapter refused a request: the one error type every adapter, the
//! payload walk and the XML reader share. Its own module so that those
//! depend on it without depending on each other.

use http::StatusCode;

/// Why an adapter refused a request. Every variant maps to a 4xx, and
/// [`Rejection::kind`] is a bounded metric label. Messages never carry
/// secrets or expected signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A required header, query parameter or field is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The signature, token or key did not verify.
    #[error("signature check failed: {0}")]
    BadSignature(&'static str),
    /// The signed timestamp is outside the replay window.
    #[error("timestamp is {skew_secs}s from now; the replay window is {window_secs}s")]
    Stale {
        /// How far the timestamp is from the gateway's clock.
        skew_secs: u64,
        /// The allowed window.
        window_secs: u64,
    },
    /// The body or a field could not be parsed.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A JSON API body (the generic API's) is not valid JSON or not the
    /// unified message model.
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    /// Decryption failed (bad key, padding or receive id).
    #[error("decryption failed: {0}")]
    Decrypt(&'static str),
    /// The method is not one the platform uses on this route.
    #[error("method not allowed")]
    Method,
    /// A bearer token is missing or did not verify (401 with `challenge` as
    /// `WWW-Authenticate`).
    #[error("{message}")]
    Unauthorized {
        /// A bounded label for metrics and audit lines.
        kind: &'static str,
        /// What the client is told (never the token or a secret).
        message: String,
        /// The `WWW-Authenticate` value.
        challenge: String,
    },
}

impl Rejection {
    /// The HTTP status this rejection answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadSignature(_)
            | Rejection::Stale { .. }
            | Rejection::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Rejection::Missing(_)
            | Rejection::Malformed(_)
            | Rejection::MalformedJson(_)
            | Rejection::Decrypt(_) => StatusCode::BAD_REQUEST,
            Rejection::Method => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A short, bounded label for metrics and audit lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Missing(_) => "missing_field",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::Stale { .. } => "stale_timestamp",
            Rejection::Malformed(_) => "malformed",
            Rejection::MalformedJson(_) => "malformed_json",
            Rejection::Decrypt(_) => "decrypt_failed",
            Rejection::Method => "method_not_allowed",
            Rejection::Unauthorized { kind, .. } => kind,
        }
    }
}
