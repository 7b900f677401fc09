//! Why an adapter refused a request: the one error type every adapter, the
//! payload walk and the XML reader share. Its own module so that those
//! depend on it without depending on each other.
//!
//! A rejection has two faces. [`Rejection::kind`] is the precise reason,
//! for the audit line and the metric label. What the client is told
//! ([`Rejection::public_kind`], [`Rejection::public_message`],
//! [`Rejection::status`]) is the same for every failure to authenticate a
//! request (a missing or wrong signature or token, a stale timestamp, a
//! replayed signature, a body that does not decrypt, bad padding, a wrong
//! receive id, anything refused before the signature was checked), so
//! that answers never tell an attacker which check failed: no padding
//! oracle, no way to probe a signature scheme one step at a time.

use http::StatusCode;

/// The error code every unauthenticated request gets.
pub const UNAUTHENTICATED: &str = "unauthenticated";
/// The message every unauthenticated request gets.
pub const UNAUTHENTICATED_MESSAGE: &str = "the request could not be authenticated";

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
    /// A signature that verifies was already used for another request, and
    /// it does not cover the body (DingTalk's robot `sign` covers only the
    /// timestamp): the body cannot be trusted.
    #[error("signature replayed: {0}")]
    Replayed(&'static str),
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
    /// The request was refused before its signature or token could be
    /// checked (a missing signature header, a body that cannot be read far
    /// enough to find the signed value). The inner rejection is the precise
    /// reason ([`Rejection::kind`]); the client gets the uniform
    /// unauthenticated answer. Built with [`Rejection::unverified`].
    #[error("{0}")]
    Unverified(Box<Rejection>),
    /// A reply URL taken from a request (DingTalk's `sessionWebhook`) is not
    /// one the route may call. Never an answer to a request: the reply is
    /// dropped and counted as a failed writeback.
    #[error("reply URL refused: {0}")]
    ReplyUrl(&'static str),
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
    /// `self` as a failure before authentication: unchanged when it already
    /// answers as unauthenticated, else wrapped in [`Rejection::Unverified`].
    /// Adapters map every error of their authentication step through it.
    pub fn unverified(self) -> Rejection {
        if self.is_unauthenticated() {
            self
        } else {
            Rejection::Unverified(Box::new(self))
        }
    }

    /// Whether the request failed to authenticate, so that the client gets
    /// the uniform answer. The bearer-token API's [`Rejection::Unauthorized`]
    /// keeps its own answer and `WWW-Authenticate` challenge.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Rejection::BadSignature(_)
                | Rejection::Stale { .. }
                | Rejection::Replayed(_)
                | Rejection::Decrypt(_)
                | Rejection::Unverified(_)
        )
    }

    /// The HTTP status this rejection answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            r if r.is_unauthenticated() => StatusCode::UNAUTHORIZED,
            Rejection::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Rejection::Method => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A short, bounded label for metrics and audit lines: the precise
    /// reason, never sent to the client for an unauthenticated request.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Missing(_) => "missing_field",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::Stale { .. } => "stale_timestamp",
            Rejection::Replayed(_) => "replayed_signature",
            Rejection::Malformed(_) => "malformed",
            Rejection::MalformedJson(_) => "malformed_json",
            Rejection::Decrypt(_) => "decrypt_failed",
            Rejection::Unverified(inner) => inner.kind(),
            Rejection::ReplyUrl(_) => "reply_url_refused",
            Rejection::Method => "method_not_allowed",
            Rejection::Unauthorized { kind, .. } => kind,
        }
    }

    /// The error code the client sees: [`UNAUTHENTICATED`] for every
    /// unauthenticated request, else [`Rejection::kind`].
    pub fn public_kind(&self) -> &'static str {
        if self.is_unauthenticated() {
            UNAUTHENTICATED
        } else {
            self.kind()
        }
    }

    /// The message the client sees: [`UNAUTHENTICATED_MESSAGE`] for every
    /// unauthenticated request, else the rejection's own description.
    pub fn public_message(&self) -> String {
        if self.is_unauthenticated() {
            UNAUTHENTICATED_MESSAGE.to_string()
        } else {
            self.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way to fail authentication answers the same; the precise
    /// reason stays in `kind` for the audit line and the metric.
    #[test]
    fn unauthenticated_failures_answer_alike() {
        let failures = [
            Rejection::BadSignature("X-Lark-Signature"),
            Rejection::BadSignature("verification token"),
            Rejection::Stale {
                skew_secs: 600,
                window_secs: 300,
            },
            Rejection::Replayed("sign"),
            Rejection::Decrypt("bad padding"),
            Rejection::Decrypt("receive id does not match"),
            Rejection::Missing("X-Lark-Signature").unverified(),
            Rejection::Malformed("body is not JSON".into()).unverified(),
        ];
        for r in &failures {
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{r:?}");
            assert_eq!(r.public_kind(), UNAUTHENTICATED, "{r:?}");
            assert_eq!(r.public_message(), UNAUTHENTICATED_MESSAGE, "{r:?}");
        }
        let kinds: Vec<_> = failures.iter().map(Rejection::kind).collect();
        assert_eq!(
            kinds,
            [
                "bad_signature",
                "bad_signature",
                "stale_timestamp",
                "replayed_signature",
                "decrypt_failed",
                "decrypt_failed",
                "missing_field",
                "malformed"
            ]
        );
    }

    #[test]
    fn unverified_does_not_nest_and_authenticated_errors_stay_precise() {
        let bad = Rejection::BadSignature("sign");
        assert_eq!(bad.clone().unverified(), bad);
        let twice = Rejection::Missing("nonce").unverified().unverified();
        assert_eq!(
            twice,
            Rejection::Unverified(Box::new(Rejection::Missing("nonce")))
        );
        assert_eq!(twice.to_string(), "missing nonce");
        // After authentication a malformed body is the client's to know.
        let late = Rejection::Missing("msgId");
        assert_eq!(late.status(), StatusCode::BAD_REQUEST);
        assert_eq!(late.public_kind(), "missing_field");
        assert_eq!(late.public_message(), "missing msgId");
        assert_eq!(Rejection::Method.status(), StatusCode::METHOD_NOT_ALLOWED);
        let jwt = Rejection::Unauthorized {
            kind: "token_expired",
            message: "token expired".into(),
            challenge: "Bearer".into(),
        };
        assert_eq!(jwt.public_kind(), "token_expired");
        assert_eq!(jwt.status(), StatusCode::UNAUTHORIZED);
    }
}
